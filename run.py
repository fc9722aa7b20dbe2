"""Start the talking-avatar server: `python run.py` serves http://127.0.0.1:8080."""
from __future__ import annotations

import logging
import time

from aiohttp import web

from models.bundle import load_models
from rtc_server.app import make_app
from rtc_server.config import parse_config
from rtc_server.logs import setup_logging
from rtc_server.tls import tls_context
from models.tts import default_cache_dir


def main(argv: list[str] | None = None) -> None:
    config = parse_config(argv)
    setup_logging(config.log_level, config.log_format)
    log = logging.getLogger("run")
    ssl_context = tls_context(config, config.cache_dir or default_cache_dir().parent)
    scheme = "https" if ssl_context is not None else "http"

    def load():
        start = time.perf_counter()
        bundle = load_models(config, progress=lambda msg: log.info("%s", msg))
        log.info("all models loaded in %.1f s; ready at %s://%s:%d/", time.perf_counter() - start,
                 scheme, config.host, config.port)
        return bundle

    app = make_app(config, load)
    log.info("serving %s://%s:%d/ (models loading; /healthz turns 200 when ready)", scheme, config.host, config.port)
    web.run_app(app, host=config.host, port=config.port, print=None, ssl_context=ssl_context)


if __name__ == "__main__":
    main()
