"""`python -m handler.security new`: a new API key, and the digest to configure (`API_KEYS`)."""

import sys

from handler.security.keys import key_digest, new_key


def main(argv: list[str]) -> int:
    """`new`: print a new key and its digest."""
    if argv != ["new"]:
        print("usage: python -m handler.security new", file=sys.stderr)
        return 2
    key = new_key()
    print(f"key:    {key}")
    print(f"digest: {key_digest(key)}")
    print("Give clients the key; put the digest in API_KEYS (comma-separated for several keys).")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
