"""Create CurveZMQ keys for an authenticated, encrypted cluster: the coordinator's pair and one
pair per client name (workers, samplers), each client's public key authorised.

Then: coordinator --curve-keys DIR; worker --curve-keys DIR --key-name NAME;
sample.py --coordinator ... --curve-keys DIR --key-name NAME. Keep DIR private."""
import argparse
import sys


from model.cli import Parser
from protocol.security import SecurityError, create_keys


def main(argv=None) -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", help="key folder to create or extend, e.g. keys/; existing key "
                        "pairs are kept, so keys already deployed stay valid")
    parser.add_argument("--clients", nargs="+", default=["worker", "sampler"],
                        help="client key pairs to create (if missing) and authorise (default: %(default)s)")
    args = parser.parse_args(argv)
    try:
        created, kept = create_keys(args.directory, args.clients)
    except (SecurityError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"keys in {args.directory} (folder 0700, secrets 0600): created {', '.join(created) or 'no new client'}"
          + (f"; kept the existing pairs of {', '.join(kept)}" if kept else "") + "; all authorised")
    return 0


if __name__ == "__main__":
    sys.exit(main())
