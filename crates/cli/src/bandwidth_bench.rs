//! `outpost model bench-export` (run by `bench/bandwidth.sh`): the bytes result export sends per
//! 1,000 inferences for an image, an audio and a sensor model, against streaming their raw
//! inputs, measured on each sink in the same run.
//!
//! An in-process server and agent (enrolled, exporting every result to the server's sink, and to
//! MQTT when a broker answers) serve three packages the project makes itself: a camera frame
//! classifier fed 640x480 JPEG frames, a sound classifier fed one-second 16 kHz WAV clips, and
//! the demo's vibration anomaly detector fed 3-axis windows. The raw bytes are the request bodies
//! for images and audio (the compressed frame, the WAV) and the float32 samples for the sensor
//! windows (smaller than their JSON), so the ratios do not flatter the export.

use crate::fleet::client::Api;
use anyhow::{bail, Context, Result};
use outpost_agent::export::config::{ExportConfig, MqttConfig};
use outpost_agent::{Agent, AgentConfig};
use outpost_proto::manifest::Dim;
use outpost_proto::Manifest;
use outpost_runtime::Package;
use outpost_server::{Server, ServerConfig};
use outpost_train::onnx::{attr_int, encode, GraphBuilder};
use std::time::{Duration, Instant};

/// What one model's 1,000 inferences sent.
struct Row {
    model: &'static str,
    raw: u64,
    server: f64,
    mqtt: Option<f64>,
}

fn manifest(name: &str, task: &str, inputs: &str, outputs: &str, tables: &str) -> Result<Manifest> {
    let text = format!(
        "format = 1\n[model]\nname = \"{name}\"\nversion = \"1\"\ntask = \"{task}\"\n{inputs}{outputs}{tables}\
         [files]\n\"model.onnx\" = \"{}\"\n",
        "0".repeat(64)
    );
    Ok(Manifest::from_toml(&text)?)
}

/// A frame classifier: global average of a 64x64 RGB image, a linear layer, softmax over ten.
fn camera() -> Result<Package> {
    let mut g = GraphBuilder::new("camera");
    let x = g.input_f32("image", &[Dim::Fixed(1), Dim::Fixed(3), Dim::Fixed(64), Dim::Fixed(64)]);
    let w: Vec<f64> = (0..30).map(|i| ((i * 7 % 11) as f64 - 5.0) / 3.0).collect();
    let w = g.constant_f32("w", &[3, 10], &w);
    let pooled = g.node("GlobalAveragePool", &[&x], "pooled", vec![]);
    let flat = g.node("Flatten", &[&pooled], "flat", vec![attr_int("axis", 1)]);
    let logits = g.node("MatMul", &[&flat, &w], "logits", vec![]);
    g.node("Softmax", &[&logits], "probs", vec![attr_int("axis", 1)]);
    g.output_f32("probs", &[Dim::Fixed(1), Dim::Fixed(10)]);
    let onnx = encode(&g.finish("bench camera")?);
    let m = manifest(
        "camera",
        "classification",
        "[[inputs]]\nname = \"image\"\ndtype = \"FP32\"\nshape = [1, 3, 64, 64]\n",
        "[[outputs]]\nname = \"probs\"\ndtype = \"FP32\"\nshape = [1, 10]\n",
        "[pre]\nkind = \"image\"\nwidth = 64\nheight = 64\n[post]\nkind = \"classification\"\ntop_k = 3\n",
    )?;
    Ok(Package::from_parts(m, vec![("model.onnx".into(), onnx)])?)
}

/// A sound classifier: one second of 16 kHz waveform, a linear layer, softmax over two.
fn sound() -> Result<Package> {
    let mut g = GraphBuilder::new("sound");
    let x = g.input_f32("audio", &[Dim::Fixed(1), Dim::Fixed(16_000)]);
    let w: Vec<f64> = (0..32_000).map(|i| ((i * 13 % 17) as f64 - 8.0) / 800.0).collect();
    let w = g.constant_f32("w", &[16_000, 2], &w);
    let logits = g.node("MatMul", &[&x, &w], "logits", vec![]);
    g.node("Softmax", &[&logits], "probs", vec![attr_int("axis", 1)]);
    g.output_f32("probs", &[Dim::Fixed(1), Dim::Fixed(2)]);
    let onnx = encode(&g.finish("bench sound")?);
    let m = manifest(
        "sound",
        "classification",
        "[[inputs]]\nname = \"audio\"\ndtype = \"FP32\"\nshape = [1, 16000]\n",
        "[[outputs]]\nname = \"probs\"\ndtype = \"FP32\"\nshape = [1, 2]\n",
        "[pre]\nkind = \"audio\"\nsample_rate = 16000\nwindow_samples = 16000\n[post]\nkind = \"classification\"\ntop_k = 2\n",
    )?;
    Ok(Package::from_parts(m, vec![("model.onnx".into(), onnx)])?)
}

/// A 640x480 camera frame: a scene that moves a little from frame to frame, with sensor noise.
fn frame(i: usize) -> Result<Vec<u8>> {
    let mut seed = 0x9e37_79b9_7f4a_7c15u64 ^ i as u64;
    let img = image::RgbImage::from_fn(640, 480, |x, y| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let noise = (seed % 9) as i32 - 4;
        let shift = (i * 3) as u32;
        let base = [((x + shift) / 3) as i32, (y / 2) as i32, (((x + y + shift) / 5) % 255) as i32];
        image::Rgb(base.map(|c| (c + noise).clamp(0, 255) as u8))
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 85).encode_image(&img)?;
    Ok(out.into_inner())
}

/// One second of 16 kHz mono 16-bit PCM: a tone in noise, as a WAV file.
fn clip(i: usize) -> Vec<u8> {
    let n = 16_000u32;
    let mut out = Vec::with_capacity(44 + 2 * n as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + 2 * n).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes());
    out.extend_from_slice(&16_000u32.to_le_bytes());
    out.extend_from_slice(&32_000u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&(2 * n).to_le_bytes());
    let mut seed = 12_345u64 + i as u64;
    for t in 0..n {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        let noise = ((seed >> 33) % 2000) as f64 - 1000.0;
        let tone = 8000.0 * (2.0 * std::f64::consts::PI * (440.0 + i as f64) * f64::from(t) / 16_000.0).sin();
        out.extend_from_slice(&((tone + noise) as i16).to_le_bytes());
    }
    out
}

fn sent(base: &str, sink: &str) -> f64 {
    crate::demo_drift::sent_bytes(base, sink)
}

/// Waits until every sink has delivered everything queued.
fn drained(rt: &tokio::runtime::Runtime, agent: &Agent, sinks: &[&str]) -> Result<()> {
    let export = agent.state.export.as_ref().context("export is not running")?;
    let deadline = Instant::now() + Duration::from_secs(120);
    for sink in sinks {
        while rt.block_on(export.queued(sink))?.iter().sum::<u64>() > 0 {
            if Instant::now() > deadline {
                bail!("the {sink} sink did not catch up within 120 s");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Runs the measurement and prints the table.
pub fn run(requests: usize, mqtt: &str, zstd_batches: bool) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let server_dir = dir.path().join("server");
    let server = rt.block_on(Server::start(ServerConfig {
        listen: "127.0.0.1:0".parse()?,
        data_dir: server_dir.clone(),
        ..ServerConfig::default()
    }))?;
    let base = format!("http://{}", server.addr);
    let admin = std::fs::read_to_string(server_dir.join("admin.token"))?;
    let api = Api::new(&base, Some(admin.trim().to_string()));
    let token = crate::demo_fleet::enrollment_token(&api, 1, &[("site", "bench")], "bandwidth bench")?;
    let models = dir.path().join("models");
    std::fs::create_dir_all(&models)?;
    camera()?.write_opkg(&models.join("camera-1.opkg"))?;
    sound()?.write_opkg(&models.join("sound-1.opkg"))?;
    let trained = outpost_train::train_vibration_anomaly(&outpost_train::TrainConfig::default())?;
    let sensor = crate::model::demo_package(&trained)?;
    let sensor_name = sensor.manifest.model.name.clone();
    sensor.write_opkg(&models.join("sensor.opkg"))?;
    let broker = crate::demo_drift::probe_broker(mqtt);
    let prefix = format!("outpost-bench-{}", std::process::id());
    let agent = rt.block_on(Agent::start(AgentConfig {
        listen: "127.0.0.1:0".parse()?,
        model_dir: models,
        data_dir: dir.path().join("agent"),
        server: Some(base.clone()),
        enroll_token: Some(token),
        export: ExportConfig {
            models: vec!["*".into()],
            mqtt: broker.as_ref().map(|url| MqttConfig {
                url: url.clone(),
                topic_prefix: prefix,
                zstd_batches,
                ..MqttConfig::default()
            }),
            ..ExportConfig::default()
        },
        ..AgentConfig::default()
    }))?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while agent.control().and_then(|c| c.device_id()).is_none() {
        if Instant::now() > deadline {
            bail!("the agent did not enroll within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let agent_url = format!("http://{}", agent.addr);
    let sinks: Vec<&str> = if broker.is_some() { vec!["server", "mqtt"] } else { vec!["server"] };
    let mut rows = Vec::new();
    let mut source = outpost_train::VibrationSource::new(5);
    for model in ["camera", "sound", "sensor"] {
        drained(&rt, &agent, &sinks)?;
        let before = (sent(&agent_url, "server"), sent(&agent_url, "mqtt"));
        let name = if model == "sensor" { sensor_name.as_str() } else { model };
        let url = format!("{agent_url}/v1/models/{name}/predict");
        let mut raw = 0u64;
        for i in 0..requests {
            let (body, kind, raw_bytes) = match model {
                "camera" => {
                    let b = frame(i)?;
                    let n = b.len() as u64;
                    (b, "image/jpeg", n)
                }
                "sound" => {
                    let b = clip(i);
                    let n = b.len() as u64;
                    (b, "audio/wav", n)
                }
                _ => {
                    let w = source.window(outpost_train::Condition::Normal, 0.0);
                    let channels: Vec<&[f32]> = w.chunks(outpost_train::WINDOW).collect();
                    (
                        serde_json::to_vec(&serde_json::json!({ "channels": channels }))?,
                        "application/json",
                        4 * w.len() as u64,
                    )
                }
            };
            let resp = ureq::post(&url).header("content-type", kind).send(&body[..])?;
            if resp.status() != 200 {
                bail!("{model}: predict answered {}", resp.status());
            }
            raw += raw_bytes;
        }
        drained(&rt, &agent, &sinks)?;
        let per = 1000.0 / requests as f64;
        rows.push(Row {
            model,
            raw: (raw as f64 * per) as u64,
            server: (sent(&agent_url, "server") - before.0) * per,
            mqtt: broker.is_some().then(|| (sent(&agent_url, "mqtt") - before.1) * per),
        });
    }
    rt.block_on(agent.shutdown())?;
    rt.block_on(server.shutdown())?;
    let mode = if zstd_batches { "zstd batches" } else { "a message per record" };
    println!("| model | raw inputs per 1000 | server sink per 1000 | ratio | MQTT ({mode}) per 1000 | ratio | goal |");
    println!("|---|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let pct = |b: f64| format!("{:.2} %", 100.0 * b / r.raw.max(1) as f64);
        let goal = if r.model == "sensor" { "-" } else { "≤ 1 %" };
        let (mqtt, mqtt_pct) = r.mqtt.map_or(("no broker".into(), "-".into()), |m| (format!("{m:.0} B"), pct(m)));
        println!(
            "| {} | {} B | {:.0} B | {} | {mqtt} | {mqtt_pct} | {goal} |",
            r.model,
            r.raw,
            r.server,
            pct(r.server)
        );
    }
    Ok(())
}
