//! `--hdr-log FILE`: the run's per-interval latency histograms as an HdrHistogram interval log (compressed V2
//! encoding, as Java's `HistogramLogWriter` writes), readable by `HistogramLogProcessor` and the other
//! standard tools. Values are microseconds; the interval max column is in milliseconds.

use std::{io::Write, path::Path, time::SystemTime};

use hdrhistogram::serialization::{interval_log::IntervalLogWriterBuilder, V2DeflateSerializer};

use crate::recorder::Interval;

/// Writes the intervals to `path`; `start` is the wall-clock time recording began (the log's base time).
///
/// # Errors
/// Any I/O error, or a histogram that cannot be encoded (reported as `InvalidData`).
pub fn write_hdr_log(path: &Path, intervals: &[Interval], start: SystemTime) -> std::io::Result<()> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut serializer = V2DeflateSerializer::new();
    let mut log = IntervalLogWriterBuilder::new()
        .add_comment("[Logged with ferroserve-loadtest; latency in microseconds from each request's due time]")
        .add_comment("[Histogram log format version 1.3]")
        .with_start_time(start)
        .with_base_time(start)
        .with_max_value_divisor(1000.0)
        .begin_log_with(&mut out, &mut serializer)?;
    log.write_comment("\"StartTimestamp\",\"Interval_Length\",\"Interval_Max\",\"Interval_Compressed_Histogram\"")?;
    for interval in intervals {
        log.write_histogram(&interval.latency, interval.start, interval.length, None)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))?;
    }
    drop(log);
    out.flush()
}
