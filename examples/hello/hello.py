"""A program that proves it received its configuration from the CAS.

It prints the SHA-256 of the secret it was given (never the secret itself), the subject of the
certificate the CAS issued for it, and the greeting file the CAS injected.
"""

import hashlib
import os
import sys
from pathlib import Path

from cryptography import x509


def main() -> int:
    secret = os.environ.get("HELLO_SECRET")
    if secret is None:
        print("HELLO_SECRET is not set: run me with casctl run", file=sys.stderr)
        return 1
    print(f"secret sha256: {hashlib.sha256(secret.encode()).hexdigest()}")
    certificate = x509.load_pem_x509_certificate(Path(os.environ["HELLO_CERT"]).read_bytes())
    print(f"certificate subject: {certificate.subject.rfc4514_string()}")
    print(f"greeting: {Path(os.environ['HELLO_GREETING']).read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
