-- recent_stats, every as-of day: average = sum / count, buckets add up, sums in range.
{{ statistics_inconsistencies(ref('recent_stats')) }}
