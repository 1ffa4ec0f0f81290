-- All-time statistics of every course (CourseStatistic columns), over the current versions of
-- its valid reviews: what the nightly job published, and the reference for the stream's
-- long_term_stats. average = sum / count, 0 without reviews; last_review_time = greatest created
-- among counted reviews (the epoch without any). The shape: macros/course_statistics.sql.
{{ course_statistics() }}
