"""Where the scripts find the checkout's saves/ folder (the shipped model, the corpus)."""
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVES = os.path.join(ROOT, "saves")
