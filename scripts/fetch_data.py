"""Download tiny shakespeare to saves/tinyshakespeare.txt and check its sha256."""
import hashlib
import os
import shutil
import sys
import urllib.error
import urllib.request

import _paths
from model.cli import Parser

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
DEFAULT_OUT = os.path.join(_paths.SAVES, "tinyshakespeare.txt")


def main(argv=None) -> int:
    parser = Parser(description=__doc__)
    parser.add_argument("--from", dest="source", help="copy this local file instead of downloading")
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write it (default: %(default)s)")
    parser.add_argument("--url", default=URL, help="download address (default: %(default)s)")
    args = parser.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    temp = args.out + ".tmp"
    try:
        if args.source:
            shutil.copyfile(args.source, temp)
        else:
            with urllib.request.urlopen(args.url, timeout=60) as response, open(temp, "wb") as out:
                shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError) as error:
        if args.source:
            print(f"error: could not copy --from {args.source} ({getattr(error, 'strerror', None) or error})",
                  file=sys.stderr)
        else:
            print(f"error: could not get the corpus ({error}). If this machine is offline, copy "
                  f"input.txt from {URL} here by other means and run "
                  f"`.venv/bin/python scripts/fetch_data.py --from PATH`.", file=sys.stderr)
        return 2
    with open(temp, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    if digest != SHA256:
        os.unlink(temp)
        print(f"error: sha256 {digest} does not match the expected {SHA256}; the file was not kept",
              file=sys.stderr)
        return 2
    os.replace(temp, args.out)
    print(f"wrote {args.out} (sha256 ok)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
