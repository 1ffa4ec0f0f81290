-- long_term_stats: average = sum / count, buckets add up, sums in range (see the macro).
{{ statistics_inconsistencies(ref('long_term_stats')) }}
