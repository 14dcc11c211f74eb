"""One calibrated cost model behind every predicted step time: measured overheads and links, forecasts, error reports."""
