"""vaultpbx: a PBX and contact-center engine that keeps what is said on calls secret."""

__version__ = "0.1.0"
