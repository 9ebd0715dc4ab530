//! The hostile corpus for APR and SafeTensors: every case is rejected with a one-line error,
//! without a panic and without an allocation larger than the file. Tensor payloads that only
//! fail when decoded (compressed frames) are caught by `Tensor::decode`.

#[path = "common/alloc_track.rs"]
mod alloc_track;
#[path = "common/hostile.rs"]
mod hostile;

use std::path::Path;

use apr_core::format::model::ModelFile;

#[global_allocator]
static ALLOCATOR: alloc_track::Tracking = alloc_track::Tracking;

/// Parses and decodes everything; returns the first error.
fn load(bytes: &[u8]) -> Result<(), String> {
    let model = ModelFile::parse(bytes).map_err(|e| e.to_string())?;
    for t in &model.tensors {
        t.decode().map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn reject(name: &str, bytes: &[u8]) -> String {
    let (result, largest) =
        alloc_track::largest_allocation(|| std::panic::catch_unwind(|| load(bytes)));
    let err = match result {
        Ok(Err(e)) => e,
        Ok(Ok(())) => panic!("{name}: a hostile file was accepted"),
        Err(_) => panic!("{name}: the reader panicked"),
    };
    // Bounded by the bytes actually present, never by a size the file claims. JSON strings with
    // escapes are decoded through a scratch buffer that grows by doubling, hence the factor 2.
    assert!(
        largest <= (2 * bytes.len()).max(4096),
        "{name}: a {}-byte file allocated {largest} bytes at once ({err})",
        bytes.len()
    );
    assert!(!err.contains('\n'), "{name}: one line: {err}");
    err
}

#[test]
fn issue_3_valid_corpus_sources_load() {
    load(&hostile::valid_apr(false)).unwrap();
    load(&hostile::valid_apr(true)).unwrap();
    load(&hostile::valid_safetensors()).unwrap();
}

#[test]
fn issue_3_hostile_apr_files_are_rejected() {
    let cases = hostile::apr_cases();
    assert!(cases.len() >= 30);
    for (name, bytes) in cases {
        let err = reject(&name, &bytes);
        let want = match name.as_str() {
            "bad-magic" => "unrecognised file",
            "version-3" => "unsupported APR version 3.0",
            "header-crc-mismatch" => "header CRC32 mismatch",
            "footer-crc-mismatch" => "file CRC32 mismatch",
            "absurd-tensor-count" => "cannot fit",
            "overlapping-offsets" => "overlap",
            "misaligned-offset" => "not 64-byte aligned",
            "unknown-dtype" => "unknown dtype",
            "duplicate-names" => "duplicate tensor",
            "metadata-not-json" => "not valid JSON",
            "lz4-and-zstd-flags" => "both LZ4 and ZSTD",
            "nine-dimensions" => "9 dimensions",
            "lz4-frame-lies-about-size" => "expected",
            "empty" | "truncated-empty" => "empty",
            _ => "",
        };
        assert!(
            err.contains(want),
            "{name}: {err:?} should mention {want:?}"
        );
    }
}

#[test]
fn issue_3_hostile_safetensors_files_are_rejected() {
    for (name, bytes) in hostile::safetensors_cases() {
        let err = reject(&name, &bytes);
        let want = match name.as_str() {
            "unsupported-dtype" => "BOOL",
            "apr-metadata-not-json" | "apr-metadata-bad-type" => "apr.metadata",
            _ => "",
        };
        assert!(
            err.contains(want),
            "{name}: {err:?} should mention {want:?}"
        );
    }
}

/// Inputs found by `cargo fuzz` (fuzz/README.md) are kept in `core/tests/corpus` and must never
/// panic again; valid inputs there must keep loading.
#[test]
fn issue_3_fuzz_regressions_do_not_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            let bytes = std::fs::read(&path).unwrap();
            // What the fuzz targets do with every input.
            std::panic::catch_unwind(|| {
                let _ = load(&bytes);
                if let Ok(model) = ModelFile::parse(&bytes) {
                    let _ = apr_core::info::ModelInfo::from_model(&model, true);
                }
                let _ = apr_core::check::check(&bytes, &|_| {});
            })
            .unwrap_or_else(|_| panic!("{} panicked", path.display()));
            n += 1;
        }
    }
    assert!(n > 0, "the regression corpus is empty");
}
