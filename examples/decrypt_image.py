"""Decrypt a LUKS or plain dm-crypt image to a raw file with the Python API — no FUSE, no root.

    python examples/decrypt_image.py IMAGE OUTPUT [--header FILE] [--key-file FILE]

Asks for the passphrase unless --key-file is given (LUKS: the passphrase is the file's
contents).  What ``cryptsetup open`` followed by ``dd`` would give, as a program of a few lines.
"""

import argparse
import getpass
import shutil
import sys

import cryptfs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("image")
    parser.add_argument("output")
    parser.add_argument("--header", help="detached LUKS header")
    parser.add_argument("--key-file", help="file holding the passphrase")
    args = parser.parse_args()
    key = {"key_file": args.key_file} if args.key_file else \
        {"passphrase": getpass.getpass(f"Passphrase for {args.image}: ")}
    try:
        with cryptfs.open_image(args.image, header=args.header, **key) as device, \
                open(args.output, "wb") as out:
            shutil.copyfileobj(device, out, 1 << 20)
            print(f"{len(device)} bytes of plaintext written to {args.output}")
    except cryptfs.errors.CryptfsError as e:
        print(f"decrypt_image: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
