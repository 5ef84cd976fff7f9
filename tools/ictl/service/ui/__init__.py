"""The console's pages (issue 16, UI): handlers in pages.py registered on
the web framework's routes (ictl.service.web.app.route), templates in
templates/, the readings chart in chart.py, static files in
../web/static/ui/. Everything shown that a device sent is escaped."""
