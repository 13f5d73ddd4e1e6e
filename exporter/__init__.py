"""Prometheus exporter for the be.ENERGISED CPO API."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("beenergised-exporter")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"


def version_text(prog: str = "beenergised-exporter") -> str:
    """What ``--version`` prints, as Prometheus' exporters do: the version (the one value that
    build_info, the User-Agent and the image label also show), Python and the platform."""
    import platform

    return (
        f"{prog}, version {__version__}\n"
        f"  python version:   {platform.python_version()} ({platform.python_implementation()})\n"
        f"  platform:         {platform.system().lower()}/{platform.machine()}"
    )
