//! The result table that `check` prints: name, kind, result (ok/FAIL + detail), time.
use crate::model::CheckResult;

/// A table of results (name, kind, result, time) and a summary line, for `check`.
pub fn render_table(results: &[CheckResult]) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect()
    };
    let rows: Vec<[String; 4]> = results
        .iter()
        .map(|r| {
            let verdict = if r.passed { "ok  " } else { "FAIL" };
            [
                clean(&r.name),
                r.kind.clone(),
                format!("{verdict} {}", clean(&r.detail)),
                format_ms(r.duration_ms),
            ]
        })
        .collect();
    let header = ["NAME", "KIND", "RESULT", "TIME"].map(str::to_owned);
    let mut width = [0usize; 4];
    for row in std::iter::once(&header).chain(&rows) {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let [name, kind, result, time] = row;
        let line = format!(
            "{name:<w0$}  {kind:<w1$}  {result:<w2$}  {time:>w3$}",
            w0 = width[0],
            w1 = width[1],
            w2 = width[2],
            w3 = width[3]
        );
        out.push_str(line.trim_end());
        out.push('\n');
    }
    let failed = results.iter().filter(|r| !r.passed).count();
    out.push_str(&match (results.len(), failed) {
        (0, _) => "no checks configured\n".to_owned(),
        (n, 0) => format!("all {n} checks passed\n"),
        (n, f) => format!("{f} of {n} checks failed\n"),
    });
    out
}

fn format_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn result(name: &str, kind: &str, passed: bool, detail: &str, ms: u64) -> CheckResult {
        CheckResult {
            name: name.into(),
            kind: kind.into(),
            passed,
            detail: detail.into(),
            attempts: 1,
            duration_ms: ms,
        }
    }

    #[test]
    fn aligned_columns_and_a_summary() {
        let table = render_table(&[
            result("gateway.lan", "icmp", true, "0.05 ms reply from ::1", 0),
            result("db", "tcp", false, "connection refused", 1),
            result("app\nline", "http", false, "status 503", 2345),
        ]);
        let want = "\
NAME         KIND  RESULT                        TIME
gateway.lan  icmp  ok   0.05 ms reply from ::1   0 ms
db           tcp   FAIL connection refused       1 ms
app line     http  FAIL status 503              2.3 s
2 of 3 checks failed
";
        assert_eq!(table, want);
    }

    #[test]
    fn summaries() {
        assert!(render_table(&[]).ends_with("no checks configured\n"));
        let ok = result("a", "icmp", true, "x", 1);
        assert!(render_table(&[ok.clone(), ok]).ends_with("all 2 checks passed\n"));
    }
}
