"""Signed export folders, with OpenSSF model-signing's offline elliptic-curve key method.

The export signs the staged folder after its manifest is written (every file, the manifest included,
hashed with sha256) into `model.sig` inside it, before the folder is renamed into place; the manifest
declares the signature, since it cannot list a hash of the file that signs it. A deployment machine
verifies with the public key: a file changed, added or removed after signing (even with its hash
updated in the manifest) or a signature by another key is refused. model_signing (and its sigstore
stack) is imported only when signing or verifying.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from exporter.errors import ArtifactError, ExportError, UsageError
from exporter.manifest import SIGNATURE_NAME

CURVES = ("secp256r1", "secp384r1", "secp521r1")
"""The curves model-signing accepts (those of Sigstore's bundle specification)."""
MAKE_KEYS = ("openssl ecparam -name prime256v1 -genkey -noout -out key.pem && "
             "openssl ec -in key.pem -pubout -out pub.pem")
MAX_KEY_BYTES = 64 << 10
MAX_SIGNATURE_BYTES = 1 << 20
"""A key-signed bundle is a few kB (one signature over the folder's file hashes); a larger model.sig is not one."""


def _read_key(path: Path, option: str) -> bytes:
    if not path.exists():
        raise UsageError(f"{option} {path} does not exist" + (" (a broken symbolic link)" if path.is_symlink() else ""))
    if not path.is_file():
        raise UsageError(f"{option} {path} is {'a directory' if path.is_dir() else 'not a regular file'}, not a key")
    if path.stat().st_size > MAX_KEY_BYTES:
        raise UsageError(f"{option} {path} is {path.stat().st_size} bytes, far more than a PEM key")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"{option} {path} cannot be read: {exc.strerror}") from None


def _require_curve(key: Any, option: str, path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    if not isinstance(key, (ec.EllipticCurvePrivateKey, ec.EllipticCurvePublicKey)):
        raise UsageError(f"{option} {path} is not an elliptic-curve key; model-signing's key method needs one "
                         f"(P-256, P-384 or P-521), e.g. {MAKE_KEYS}")
    if key.curve.name not in CURVES:
        raise UsageError(f"{option} {path} is on curve {key.curve.name}; model-signing accepts P-256, P-384 "
                         "and P-521")


def check_private_key(path: Path) -> None:
    """UsageError unless `path` is an unencrypted PEM elliptic-curve private key model-signing can use."""
    from cryptography.hazmat.primitives import serialization

    data = _read_key(path, "--sign-key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise UsageError(f"--sign-key {path} is encrypted; give an unencrypted PEM key (keep it in the CI "
                         "job's secret store, not in the repository)") from None
    except Exception:  # cryptography raises ValueError or UnsupportedAlgorithm for anything else
        hint = " (it is a public key: signing needs the private one)" if b"PUBLIC KEY" in data else ""
        raise UsageError(f"--sign-key {path} is not a PEM private key{hint}; make a key pair with {MAKE_KEYS}") \
            from None
    _require_curve(key, "--sign-key", path)


def check_public_key(path: Path) -> None:
    """UsageError unless `path` is a PEM elliptic-curve public key model-signing can verify with."""
    from cryptography.hazmat.primitives import serialization

    data = _read_key(path, "--verify-key")
    try:
        key = serialization.load_pem_public_key(data)
    except Exception:  # ValueError or UnsupportedAlgorithm
        hint = (" (it is a private key: give the public one, `openssl ec -in key.pem -pubout -out pub.pem`, "
                "and keep the private key off the deployment machine)") if b"PRIVATE KEY" in data else ""
        raise UsageError(f"--verify-key {path} is not a PEM public key{hint}") from None
    _require_curve(key, "--verify-key", path)


def _hashing_config() -> Any:
    from model_signing import hashing

    # every file but the signature, git's files included: nothing in the folder goes unsigned
    return hashing.Config().set_ignored_paths(paths=[SIGNATURE_NAME], ignore_git_paths=False)


def sign_folder(folder: Path, key: Path) -> Path:
    """Sign every file of `folder` into `folder/model.sig`."""
    from model_signing import signing

    check_private_key(key)
    signature = folder / SIGNATURE_NAME
    try:
        config = signing.Config().use_elliptic_key_signer(private_key=key).set_hashing_config(_hashing_config())
        config.sign(folder, signature)
    except Exception as exc:
        raise ExportError(f"Signing {folder.name} with {key} failed: {type(exc).__name__}: "
                          f"{(str(exc).strip().splitlines() or [''])[0][:200]}") from None
    return signature


def _mismatch(exc: Exception, public_key: Path) -> str:
    """model-signing's verification failure, in one line naming the files."""
    text = str(exc)
    if text.startswith("Key mismatch"):
        return f"{SIGNATURE_NAME} was made with another key than {public_key}"
    parts = []
    text = text.replace("\\'", "'")  # model-signing lists its findings as a Python list's repr
    changed = re.findall(r"Hash mismatch for '([^']+)'", text)
    if changed:
        parts.append(f"changed since signing: {', '.join(changed)}")
    for label, pattern in (("added since signing", r"Extra files found in model '[^']*': ([^\"'\]]+)"),
                           ("removed since signing", r"Missing files in model '[^']*': ([^\"'\]]+)")):
        found = re.search(pattern, text)
        if found:
            parts.append(f"{label}: {found.group(1).strip()}")
    if parts:
        return f"signature does not match the folder ({'; '.join(parts)})"
    first = (text.strip().splitlines() or [""])[0][:200]
    return f"{SIGNATURE_NAME} does not verify with {public_key} ({type(exc).__name__}: {first})"


def verify_folder(folder: Path, public_key: Path) -> None:
    """ArtifactError unless `folder` holds a signature by `public_key`'s private key over exactly its
    current files."""
    import os
    import stat

    from model_signing import verifying

    signature = folder / SIGNATURE_NAME
    try:
        info = os.lstat(signature)
    except FileNotFoundError:
        raise ArtifactError(f"not signed: no {SIGNATURE_NAME} in the folder (export it with --sign-key)") from None
    if not stat.S_ISREG(info.st_mode):
        raise ArtifactError(f"{SIGNATURE_NAME} is not a regular file")
    if info.st_size > MAX_SIGNATURE_BYTES:  # model-signing reads the whole bundle into memory
        raise ArtifactError(f"{SIGNATURE_NAME} is {info.st_size} bytes, far more than a signature bundle; not "
                            "reading it (sign the folder again with --sign-key)")
    try:
        config = verifying.Config().use_elliptic_key_verifier(public_key=public_key)
        config.set_hashing_config(_hashing_config()).verify(folder, signature)
    except Exception as exc:
        raise ArtifactError(_mismatch(exc, public_key)) from None
