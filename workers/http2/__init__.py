# hpack (under h2, both directions) logs every header field and integer it encodes or decodes at DEBUG through the
# stdlib logger: about two dozen calls per request and response that the workers never show (they configure no
# DEBUG logging). Its module loggers are replaced by a no-op once, when the HTTP/2 package is imported.
import hpack.hpack
import hpack.table


class _NoLog:
    def debug(self, *args, **kwargs) -> None:
        pass


hpack.hpack.log = _NoLog()
hpack.table.log = _NoLog()
