//! `apr check FILE [--json]`: the ten stages, PASS/FAIL/SKIP each, exit 1 on any FAIL.

use anyhow::{Context, Result, bail};
use apr_core::check::{Status, check};
use apr_core::file::MappedFile;

use crate::args::CheckArgs;
use crate::output;

pub(crate) fn run(args: CheckArgs) -> Result<()> {
    let path = &args.file;
    let file = MappedFile::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let report = check(file.bytes(), &|p| file.release(p));
    let text = if args.json {
        let mut s = serde_json::to_string_pretty(&report)?;
        s.push('\n');
        s
    } else {
        let mut s = format!(
            "{} ({})\n",
            path.display(),
            report.format.map_or("unknown format", |f| f.name())
        );
        for st in &report.stages {
            let word = match st.status {
                Status::Pass => "PASS",
                Status::Fail => "FAIL",
                Status::Skip => "SKIP",
            };
            s.push_str(&format!(
                "{:>2}. {:<27} {word}  {}\n",
                st.number, st.name, st.detail
            ));
        }
        let count = |w: Status| report.stages.iter().filter(|s| s.status == w).count();
        s.push_str(&format!(
            "{}: {} passed, {} failed, {} skipped\n",
            if report.pass { "OK" } else { "FAILED" },
            count(Status::Pass),
            count(Status::Fail),
            count(Status::Skip)
        ));
        s
    };
    output::print(&text)?;
    if !report.pass {
        let failed: Vec<&str> = report
            .stages
            .iter()
            .filter(|s| s.status == Status::Fail)
            .map(|s| s.name)
            .collect();
        bail!("{} failed: {}", path.display(), failed.join(", "));
    }
    Ok(())
}
