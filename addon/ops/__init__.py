"""Operations: the admin listener (metrics, health), Prometheus metrics, structured logs."""
