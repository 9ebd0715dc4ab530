//! `apr validate FILE [--strict] [--json]`: every tensor decoded and examined.

use std::io::IsTerminal;

use anyhow::{Context, Result, bail};
use apr_core::file::MappedFile;
use apr_core::validate::validate;
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::ValidateArgs;
use crate::output;

pub(crate) fn run(args: ValidateArgs) -> Result<()> {
    let path = &args.file;
    let file = MappedFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let model = file.model().with_context(|| path.display().to_string())?;
    let total = model
        .tensors
        .iter()
        .fold(0u64, |a, t| a.saturating_add(t.raw_size()));
    let bar = if !args.json && std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(total);
        if let Ok(style) =
            ProgressStyle::with_template("validating [{bar:40}] {bytes}/{total_bytes} eta {eta}")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar
    } else {
        ProgressBar::hidden()
    };
    let report = validate(&model, args.strict, &mut |n| bar.inc(n), &mut |t| {
        file.release(t.data);
    });
    bar.finish_and_clear();
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        s
    } else {
        let mut s = format!(
            "{:<40} {:<6} {:<14} {:>11} {:>11} {:>11} {:>10}  {}\n",
            "tensor", "dtype", "shape", "min", "max", "mean", "std", "status"
        );
        for t in &report.tensors {
            let shape = format!("{:?}", t.shape).replace(' ', "");
            s.push_str(&format!(
                "{:<40} {:<6} {:<14} {:>11.4e} {:>11.4e} {:>11.4e} {:>10.4e}  {}{}\n",
                t.name,
                t.dtype.name(),
                shape,
                t.min,
                t.max,
                t.mean,
                t.std,
                t.status,
                if t.notes.is_empty() {
                    String::new()
                } else {
                    format!(": {}", t.notes.join("; "))
                }
            ));
        }
        for p in &report.problems {
            s.push_str(&format!("problem: {p}\n"));
        }
        s.push_str(&format!(
            "{}: {} tensors, {} failed, {} with warnings{}\n",
            if report.pass { "OK" } else { "FAILED" },
            report.tensors.len(),
            report.failed,
            report.warned,
            if args.strict {
                " (--strict: warnings fail)"
            } else {
                ""
            }
        ));
        s
    };
    output::print(&text)?;
    if !report.pass {
        bail!(
            "{}: {} tensors failed, {} with warnings{}",
            path.display(),
            report.failed,
            report.warned,
            report
                .problems
                .first()
                .map(|p| format!("; {p}"))
                .unwrap_or_default()
        );
    }
    Ok(())
}
