"""HTTP.sys-style port sharing for Linux: a TLS front door that routes by UrlPrefix."""

__version__ = "0.1.0"
