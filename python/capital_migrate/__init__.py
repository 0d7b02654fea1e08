"""capital-migrate: run the prestamos capital-tracking migration safely through Ansible."""

__version__ = "0.1.0"
