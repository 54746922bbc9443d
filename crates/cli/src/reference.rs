//! `outpost model reference`: the `[reference]` statistics a package's drift monitor compares
//! live requests with, computed from sample requests run through the package itself.
//!
//! A sample is what a client sends the agent: an OIP v2 infer body, or what the package's
//! `[pre]` pipeline takes on `predict` (an image, a WAV clip, a sensor JSON body). Each is
//! turned into model inputs and run exactly as the agent would, so the statistics describe
//! the tensors the device will see, outputs included.

use anyhow::{bail, Context, Result};
use clap::Args;
use outpost_agent::http::codec;
use outpost_runtime::model::MemoryBudget;
use outpost_runtime::pipeline::preprocess;
use outpost_runtime::reference::ReferenceBuilder;
use outpost_runtime::{LoadOptions, LoadedModel, Package, Tensor};
use std::io::BufRead;
use std::path::{Path, PathBuf};

/// Below this many requests the reference is coarse: say so.
const FEW_SAMPLES: u64 = 100;

/// Flags of `outpost model reference`.
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// The package (`.opkg` or directory).
    package: PathBuf,
    /// Sample requests: files, or directories of them (not recursed). A `.jsonl` file holds one
    /// request per line. A request is an OIP v2 infer body (`{"inputs": [...]}`) or what the
    /// package's `[pre]` pipeline takes on `predict`: an image, a WAV clip, a sensor JSON body.
    #[arg(long = "samples", required = true)]
    samples: Vec<PathBuf>,
    /// Where to write the package; by default a `.opkg` is replaced (atomically). A directory
    /// package needs a new path.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Path of libonnxruntime.so (for packages that run only on onnxruntime).
    #[arg(long, env = "ORT_DYLIB_PATH")]
    ort_library: Option<PathBuf>,
}

/// Runs `outpost model reference`.
pub fn run(a: ReferenceArgs) -> Result<()> {
    let pkg = Package::open(&a.package).with_context(|| format!("opening {}", a.package.display()))?;
    let out = a.out.clone().unwrap_or_else(|| a.package.clone());
    let to_dir = out.extension().is_none_or(|e| e != "opkg");
    if to_dir && out.exists() {
        bail!("{} exists: a directory package is never overwritten, give --out NEW_DIR or a .opkg path", out.display());
    }
    let (pkg, summary) = attach(pkg, &a.samples, a.ort_library.clone())
        .with_context(|| format!("computing the reference of {}", a.package.display()))?;
    if to_dir {
        pkg.write_dir(&out)?;
    } else {
        pkg.write_opkg(&out)?;
    }
    summary.print(&out);
    Ok(())
}

/// What [`attach`] computed from, and what it describes.
pub struct Summary {
    requests: u64,
    items: u64,
    described: Vec<String>,
}

impl Summary {
    /// Prints it under the package's path.
    pub fn print(&self, out: &Path) {
        println!("{}: reference statistics from {} requests ({} model runs)", out.display(), self.requests, self.items);
        for d in &self.described {
            println!("  {d}");
        }
        if self.items < FEW_SAMPLES {
            eprintln!(
                "  only {} model runs: a reference this small is coarse; a few hundred or more \
                 requests like the device's make drift scores mean more",
                self.items
            );
        }
    }
}

/// `pkg` with the `[reference]` statistics of `samples` run through it (see the module docs).
pub fn attach(pkg: Package, samples: &[PathBuf], ort_library: Option<PathBuf>) -> Result<(Package, Summary)> {
    let opts = LoadOptions { run_selftest: false, ort_library, ..LoadOptions::default() };
    let model = LoadedModel::load(&pkg, &opts, &MemoryBudget::new(u64::MAX)).context("loading the model")?;
    let mut builder = ReferenceBuilder::new();
    let (mut requests, mut items) = (0u64, 0u64);
    for_each_sample(samples, |label, body| {
        for inputs in model_inputs(&pkg, &model, body).with_context(|| label.to_string())? {
            let done = model.infer_blocking(inputs.clone()).with_context(|| label.to_string())?;
            let outputs = done.result.with_context(|| label.to_string())?;
            let ins: Vec<(&str, &Tensor)> = model.inputs().iter().map(|s| s.name.as_str()).zip(&inputs).collect();
            let outs: Vec<(&str, &Tensor)> = model.outputs().iter().map(|s| s.name.as_str()).zip(&outputs).collect();
            builder.add(&ins, &outs).with_context(|| label.to_string())?;
            items += 1;
        }
        requests += 1;
        Ok(())
    })?;
    if items == 0 {
        bail!("no sample requests found in {}", list(samples));
    }
    let reference = builder.finish();
    let mut manifest = pkg.manifest.clone();
    let described: Vec<String> = [("input", &reference.inputs), ("output", &reference.outputs)]
        .iter()
        .flat_map(|(kind, m)| {
            m.iter().map(move |(name, s)| match s.axis {
                Some(axis) => format!("{kind} {name}: {} channels along axis {axis}", s.mean.len()),
                None => format!("{kind} {name}: all values pooled"),
            })
        })
        .collect();
    manifest.reference = Some(reference);
    Ok((pkg.with_manifest(manifest)?, Summary { requests, items, described }))
}

fn list(paths: &[PathBuf]) -> String {
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

/// Calls `f` with every sample request, one at a time (a sample file may be larger than memory
/// would like), and a label naming where it came from (`file` or `file:line`).
fn for_each_sample(paths: &[PathBuf], mut f: impl FnMut(&str, &[u8]) -> Result<()>) -> Result<()> {
    let mut files = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("--samples {}", p.display()))?;
        if meta.is_dir() {
            let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|f| f.is_file() && !f.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')))
                .collect();
            entries.sort();
            files.extend(entries);
        } else {
            files.push(p.clone());
        }
    }
    for file in files {
        let reading = || format!("reading {}", file.display());
        if file.extension().is_some_and(|e| e == "jsonl" || e == "ndjson") {
            let mut lines = std::io::BufReader::new(std::fs::File::open(&file).with_context(reading)?);
            let mut line = Vec::new();
            for number in 1.. {
                line.clear();
                if lines.read_until(b'\n', &mut line).with_context(reading)? == 0 {
                    break;
                }
                if line.iter().any(|b| !b.is_ascii_whitespace()) {
                    f(&format!("{}:{number}", file.display()), &line)?;
                }
            }
        } else {
            f(&file.display().to_string(), &std::fs::read(&file).with_context(reading)?)?;
        }
    }
    Ok(())
}

/// The model inputs of one request: an OIP body decoded, or raw data through `[pre]`.
fn model_inputs(pkg: &Package, model: &LoadedModel, body: &[u8]) -> Result<Vec<Vec<Tensor>>> {
    if is_oip(body) {
        let parsed = codec::parse_request(body, None).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        let inputs = codec::decode_inputs(&parsed, model.inputs()).map_err(|e| anyhow::anyhow!("{}", e.message))?;
        return Ok(vec![inputs]);
    }
    let Some(pre) = &pkg.manifest.pre else {
        bail!("not an OIP v2 infer request ({{\"inputs\": [...]}}), and the package has no [pre] pipeline to make inputs of it");
    };
    let prepared = preprocess(pre, body)?;
    Ok(prepared.items.into_iter().map(|(t, _)| vec![t]).collect())
}

/// Whether `body` is a JSON object with an `inputs` array (an OIP v2 infer request).
fn is_oip(body: &[u8]) -> bool {
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return false;
    }
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| v.get("inputs").is_some_and(|i| i.is_array()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oip_bodies_are_told_from_pipeline_bodies() {
        assert!(is_oip(br#" {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}"#));
        assert!(!is_oip(br#"{"channels": [[1, 2], [3, 4]]}"#));
        assert!(!is_oip(br#"{"inputs": "x"}"#));
        assert!(!is_oip(b"\x89PNG\r\n"));
    }
}
