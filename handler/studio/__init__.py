"""The studio: a web page, served by the app itself, to make, hear and manage music."""

from handler.studio.routes import PAGE, STATIC_DIR, install_studio

__all__ = ["PAGE", "STATIC_DIR", "install_studio"]
