//! `bench-linux`'s report: the table, the ratios in words, the JSON file.

use super::{EngineRuns, Job, Metric, Options, REFERENCE};
use std::fs;
use std::path::Path;

/// The median; `None` for an empty list.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(v[n / 2]),
        _ => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}

/// `25.3x`, `2.45x`, `0.50x`.
pub fn times(r: f64) -> String {
    if r >= 100.0 {
        format!("{r:.0}x")
    } else if r >= 10.0 {
        format!("{r:.1}x")
    } else {
        format!("{r:.2}x")
    }
}

/// The ratio in words: `vireo-tcg takes 25.3x QEMU's time`.
pub fn ratio_sentence(engine: &str, metric: Metric, r: f64) -> String {
    let faster = if r < 1.0 && r > 0.0 {
        format!(" ({} faster)", times(1.0 / r))
    } else {
        String::new()
    };
    match metric {
        Metric::Rss => format!("{engine} uses {} QEMU's peak RSS", times(r)),
        _ => format!("{engine} takes {} QEMU's time{faster}", times(r)),
    }
}

/// A value of `metric` for the table.
pub fn show(metric: Metric, v: f64) -> String {
    match metric {
        Metric::Rss => format!("{v:.0} MiB"),
        _ if v < 10.0 => format!("{v:.3} s"),
        _ => format!("{v:.2} s"),
    }
}

/// `/proc/loadavg`'s three load averages.
pub fn load() -> String {
    fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".to_string())
}

/// `boot`, `md5 64 MiB`, `wall boot+md5`, `RSS boot+md5`.
pub fn metric_name(m: Metric, boots: &[Vec<Job>]) -> String {
    let first: Vec<&str> = boots
        .first()
        .map(|b| b.iter().map(|j| j.name()).collect())
        .unwrap_or_default();
    let what = std::iter::once("boot")
        .chain(first)
        .collect::<Vec<_>>()
        .join("+");
    match m {
        Metric::Job(j) => j.name().to_string(),
        Metric::Wall => format!("wall {what}"),
        Metric::Rss => format!("RSS {what}"),
    }
}

/// One line of the table.
pub struct Row {
    engine: &'static str,
    metric: Metric,
    label: String,
    /// Samples the runs should have given.
    planned: usize,
    values: Vec<f64>,
    guest: Vec<f64>,
    median: Option<f64>,
    /// This engine's median over the reference engine's.
    ratio: Option<f64>,
}

pub fn table_rows(engines: &[EngineRuns], o: &Options, boots: &[Vec<Job>]) -> Vec<Row> {
    let planned = |m: Metric| {
        o.runs
            * match m {
                Metric::Job(Job::Boot) => boots.len(),
                _ => 1,
            }
    };
    let mut metrics: Vec<Metric> = engines
        .iter()
        .flat_map(|e| e.samples.keys().copied())
        .collect();
    metrics.extend(boots.iter().flatten().map(|&j| Metric::Job(j)));
    metrics.extend([Metric::Job(Job::Boot), Metric::Wall, Metric::Rss]);
    metrics.sort();
    metrics.dedup();
    let reference = engines.iter().find(|e| e.variant.name == REFERENCE);
    let med = |e: &EngineRuns, m| e.samples.get(&m).and_then(|s| median(&s.0));
    let mut rows = Vec::new();
    for m in metrics {
        let q = reference.and_then(|r| med(r, m));
        for e in engines {
            let (values, guest) = e.samples.get(&m).cloned().unwrap_or_default();
            let label = match m {
                Metric::Job(j) => o.sizes.label(j),
                _ => metric_name(m, boots),
            };
            let median = median(&values);
            rows.push(Row {
                planned: planned(m),
                engine: e.variant.name,
                metric: m,
                label,
                ratio: median.zip(q).filter(|(_, q)| *q > 0.0).map(|(v, q)| v / q),
                median,
                values,
                guest,
            });
        }
    }
    rows
}

pub fn print_table(rows: &[Row], engines: &[EngineRuns], boots: &[Vec<Job>]) {
    println!();
    println!(
        "{:<12} {:<20} {:>5} {:>10} {:>10} {:>10} {:>10}  vs QEMU",
        "engine", "job", "ok", "median", "min", "max", "guest med"
    );
    println!("{}", "-".repeat(94));
    for r in rows {
        let fmt = |v: Option<f64>| v.map_or("-".to_string(), |v| show(r.metric, v));
        let min = r.values.iter().copied().reduce(f64::min);
        let max = r.values.iter().copied().reduce(f64::max);
        let ratio = match (r.engine == REFERENCE, r.ratio) {
            (true, _) => "(reference)".to_string(),
            (false, Some(x)) => times(x),
            (false, None) => "-".to_string(),
        };
        println!(
            "{:<12} {:<20} {:>5} {:>10} {:>10} {:>10} {:>10}  {}",
            r.engine,
            r.label,
            format!("{}/{}", r.values.len(), r.planned),
            fmt(r.median),
            fmt(min),
            fmt(max),
            median(&r.guest).map_or("-".to_string(), |v| format!("{v:.2} s")),
            ratio
        );
    }
    println!("{}", "-".repeat(94));
    println!(
        "ok: good samples of those planned; boot: spawn -> /init marker; jobs: host time between the \
         guest's begin/end marker lines (guest med: the same by the guest's /proc/uptime); \
         wall/RSS: the whole process of the boot running {}; vs QEMU: median / {REFERENCE}'s \
         median",
        metric_name(Metric::Wall, boots).trim_start_matches("wall ")
    );
    for r in rows.iter().filter(|r| r.engine != REFERENCE) {
        if let Some(x) = r.ratio {
            println!(
                "  {:<20} {}",
                r.label,
                ratio_sentence(r.engine, r.metric, x)
            );
        }
    }
    for e in engines {
        println!(
            "{:<12} guest CPU: {}",
            e.variant.name,
            e.cpu.as_deref().unwrap_or("(not reported)")
        );
        for err in e.errors.iter().take(5) {
            println!("{:<12} error: {err}", "");
        }
    }
}

pub fn write_json(
    path: &Path,
    o: &Options,
    rows: &[Row],
    engines: &[EngineRuns],
    appends: &[String],
    load_start: &str,
) -> Result<(), String> {
    let rows: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "engine": r.engine,
                "job": r.label,
                "unit": if r.metric == Metric::Rss { "MiB" } else { "s" },
                "values": r.values,
                "guest_clock_values": r.guest,
                "median": r.median,
                "ratio_to_qemu": r.ratio,
            })
        })
        .collect();
    let engines: Vec<serde_json::Value> = engines
        .iter()
        .map(|e| {
            serde_json::json!({
                "name": e.variant.name,
                "program": e.program.display().to_string(),
                "args": e.variant.args,
                "guest_cpu": e.cpu,
                "errors": e.errors,
            })
        })
        .collect();
    let doc = serde_json::json!({
        "runs": o.runs,
        "mem_mib": o.mem_mib,
        "md5_mib": o.sizes.md5_mib,
        "gzip_mib": o.sizes.gzip_mib,
        "loop_iters": o.sizes.loop_iters,
        "kernel_cmdlines": appends,
        "load_start": load_start,
        "load_end": load(),
        "engines": engines,
        "rows": rows,
    });
    let text = serde_json::to_string_pretty(&doc).map_err(|e| format!("json: {e}"))?;
    fs::write(path, text + "\n").map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0]), Some(2.5));
        assert_eq!(median(&[]), None);
        assert_eq!(times(25.31), "25.3x");
        assert_eq!(times(253.1), "253x");
        assert_eq!(times(2.449), "2.45x");
        assert_eq!(
            ratio_sentence("vireo-tcg", Metric::Job(Job::Md5), 25.31),
            "vireo-tcg takes 25.3x QEMU's time"
        );
        assert_eq!(
            ratio_sentence("vireo-tcg", Metric::Job(Job::Boot), 0.5),
            "vireo-tcg takes 0.50x QEMU's time (2.00x faster)"
        );
        assert_eq!(
            ratio_sentence("vireo-tcg", Metric::Rss, 1.2),
            "vireo-tcg uses 1.20x QEMU's peak RSS"
        );
        assert_eq!(show(Metric::Rss, 612.4), "612 MiB");
        assert_eq!(show(Metric::Wall, 1.06), "1.060 s");
        assert_eq!(show(Metric::Wall, 73.123), "73.12 s");
        use Job::*;
        let boots = |j: &[Job]| super::super::boots(j);
        assert_eq!(
            metric_name(Metric::Wall, &boots(&[Md5, Loop])),
            "wall boot+md5"
        );
        assert_eq!(metric_name(Metric::Rss, &boots(&[Boot])), "RSS boot");
    }
}
