"""The control-room web feed: dashboard page, JSON API, SSE streams, /metrics (`server`), and
the Kafka adapter that feeds a `streams.feed.LiveView` from the output topics (`topicfeed`)."""
