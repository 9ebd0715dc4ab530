//! Issue 4 on tiny generated qwen2 models: one forward pass for every format, batched prompts
//! equal to token-by-token decoding, the KV cache bounds, the tokenizer and the decode loop.

#[path = "common/convert.rs"]
mod convert_helper;

use std::ops::ControlFlow;

use apr_core::backend::cpu::Cpu;
use apr_core::chat_template::{ChatTemplate, Message, Role};
use apr_core::dtype::GgmlType;
use apr_core::format::Format;
use apr_core::format::apr::Compression;
use apr_core::format::model::ModelFile;
use apr_core::generate::{GenerateParams, Session, StopReason};
use apr_core::model::{Logits, Qwen2};
use apr_core::sample::SamplerConfig;
use apr_core::synth::{self, Config};
use apr_core::tokenizer::Tokenizer;
use convert_helper::{MATRIX_TYPES, convert};

const PROMPT: [u32; 7] = [72, 101, 108, 108, 111, 32, 119];

fn logits_of(bytes: &[u8], tokens: &[u32]) -> Vec<f32> {
    let model = ModelFile::parse(bytes).unwrap();
    let mut qwen = Qwen2::load(&model, Cpu::new(2), 64).unwrap();
    qwen.forward(tokens, Logits::Last).unwrap()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

#[test]
fn issue_4_gguf_and_apr_give_identical_logits_for_every_type() {
    for ty in MATRIX_TYPES {
        let gguf = synth::gguf(&Config::default(), ty).unwrap();
        let want = logits_of(&gguf, &PROMPT);
        assert!(want.iter().all(|l| l.is_finite()), "{ty}");
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let apr = convert(&gguf, Format::Apr, None, None, c);
            let got = logits_of(&apr, &PROMPT);
            assert!(
                got.iter()
                    .zip(&want)
                    .all(|(a, b)| a.to_bits() == b.to_bits()),
                "{ty} {c:?}: max diff {}",
                max_diff(&got, &want)
            );
        }
        // SafeTensors holds the dequantized weights; only activation rounding differs.
        let st = convert(&gguf, Format::Safetensors, None, None, Compression::None);
        let got = logits_of(&st, &PROMPT);
        let spread = want.iter().fold(0.0f32, |a, l| a.max(l.abs()));
        assert!(
            max_diff(&got, &want) <= 0.05 * spread.max(1.0),
            "{ty}: {}",
            max_diff(&got, &want)
        );
    }
}

#[test]
fn issue_4_batched_prompt_equals_token_by_token() {
    let cfg = Config {
        separate_lm_head: true,
        ..Config::default()
    };
    let gguf = synth::gguf(&cfg, GgmlType::Q8_0).unwrap();
    let model = ModelFile::parse(&gguf).unwrap();
    // Longer than one batch, so the prompt runs in two steps.
    let n = apr_core::model::qwen2::BATCH + 13;
    let tokens: Vec<u32> = (0..n as u32).map(|i| (i * 37 + 11) % 256).collect();
    let mut a = Qwen2::load(&model, Cpu::new(2), n + 8).unwrap();
    let all = a.forward(&tokens, Logits::All).unwrap();
    let vocab = a.config().vocab;
    assert_eq!(all.len(), tokens.len() * vocab);
    let mut b = Qwen2::load(&model, Cpu::new(1), n + 8).unwrap();
    for (i, &t) in tokens.iter().enumerate() {
        let one = b.forward(&[t], Logits::Last).unwrap();
        assert_eq!(one, all[i * vocab..(i + 1) * vocab], "position {i}");
    }
    // Rewinding and replaying reproduces the same logits.
    b.truncate(10);
    let again = b.forward(&tokens[10..12], Logits::Last).unwrap();
    assert_eq!(again, all[11 * vocab..12 * vocab]);
}

#[test]
fn issue_4_context_is_bounded() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let model = ModelFile::parse(&gguf).unwrap();
    let mut q = Qwen2::load(&model, Cpu::new(1), 8).unwrap();
    q.forward(&[1, 2, 3, 4, 5, 6], Logits::Last).unwrap();
    let err = q.forward(&[1, 2, 3], Logits::Last).unwrap_err();
    assert!(err.to_string().contains("context is full"), "{err}");
    assert!(Qwen2::load(&model, Cpu::new(1), 0).is_err());
    // A token outside the vocabulary is an error, not a panic.
    let mut q = Qwen2::load(&model, Cpu::new(1), 8).unwrap();
    assert!(q.forward(&[1_000_000], Logits::Last).is_err());
}

#[test]
fn issue_4_config_comes_from_the_file() {
    let cfg = Config {
        layers: 3,
        hidden: 128,
        heads: 4,
        kv_heads: 1,
        ffn: 320,
        separate_lm_head: false,
        ..Config::default()
    };
    let gguf = synth::gguf(&cfg, GgmlType::F16).unwrap();
    let model = ModelFile::parse(&gguf).unwrap();
    let q = Qwen2::load(&model, Cpu::new(1), 16).unwrap();
    let c = q.config();
    assert_eq!(
        (c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn),
        (3, 128, 4, 1, 32, 320)
    );
    assert!(c.tied);
    // A missing tensor is named.
    let mut m = ModelFile::parse(&gguf).unwrap();
    m.tensors.retain(|t| t.name != "blk.1.attn_k.bias");
    let err = Qwen2::load(&m, Cpu::new(1), 16).unwrap_err();
    assert!(err.to_string().contains("blk.1.attn_k.bias"), "{err}");
}

fn session(bytes: &[u8]) -> (ModelFile<'_>, Tokenizer) {
    let model = ModelFile::parse(bytes).unwrap();
    let tok = Tokenizer::from_metadata(&model.metadata).unwrap();
    (model, tok)
}

#[test]
fn issue_4_tokenizer_of_a_generated_model() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let (_, tok) = session(&gguf);
    let ids = tok.encode("the cat<|im_end|>", true).unwrap();
    let end = tok.special_id("<|im_end|>").unwrap();
    assert_eq!(*ids.last().unwrap(), end);
    assert!(tok.is_end_of_generation(end));
    assert_eq!(tok.decode(&ids, false).unwrap(), "the cat<|im_end|>");
    assert_eq!(tok.decode(&ids, true).unwrap(), "the cat");
    // Unparsed, the marker is text.
    let plain = tok.encode("<|im_end|>", false).unwrap();
    assert!(plain.len() > 1 && !plain.contains(&end));
    assert_eq!(tok.decode(&plain, false).unwrap(), "<|im_end|>");
    // Every byte round-trips, UTF-8 or not.
    let text = "naïve café 日本語 🚀\t\n  x";
    assert_eq!(
        tok.decode(&tok.encode(text, true).unwrap(), false).unwrap(),
        text
    );
    assert!(tok.decode(&[9_999_999], false).is_err());
}

#[test]
fn issue_4_chat_template_is_the_models_own() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let (model, _) = session(&gguf);
    let t = ChatTemplate::from_metadata(&model.metadata).unwrap();
    let msgs = [
        Message::new(Role::System, "be brief"),
        Message::new(Role::User, "hi"),
    ];
    assert_eq!(
        t.render(&msgs, true).unwrap(),
        "<|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    );
    assert!(!t.render(&msgs, false).unwrap().ends_with("assistant\n"));
    // A template that raises is an error with its message.
    let bad = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
    let err = bad.render(&msgs, true).unwrap_err();
    assert!(err.to_string().contains("roles must alternate"), "{err}");
    assert!(ChatTemplate::new("{% for %}", "", "").is_err());
}

#[test]
fn issue_4_generation_stops_and_reuses_the_cache() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let (model, tok) = session(&gguf);
    let qwen = Qwen2::load(&model, Cpu::new(2), 64).unwrap();
    let mut s = Session::new(qwen, tok);
    let prompt = s.tokenizer().encode("the cat is", true).unwrap();
    let params = GenerateParams {
        max_tokens: 12,
        sampler: SamplerConfig::greedy(),
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let mut streamed = String::new();
    let out = s
        .generate(&prompt, &params, |t| {
            streamed.push_str(&t.text);
            ControlFlow::Continue(())
        })
        .unwrap();
    assert_eq!(out.stop, StopReason::MaxTokens);
    assert_eq!(out.tokens.len(), 12);
    assert_eq!(streamed, out.text);
    assert_eq!(out.text, s.tokenizer().decode(&out.tokens, false).unwrap());
    // The same prompt again: all but its last token come from the cache, and greedy repeats.
    let again = s
        .generate(&prompt, &params, |_| ControlFlow::Continue(()))
        .unwrap();
    assert_eq!(again.cached_tokens, prompt.len() - 1);
    assert_eq!(again.tokens, out.tokens);
    // A longer prompt that extends the conversation reuses it all.
    let mut longer = prompt.clone();
    longer.extend(&out.tokens);
    longer.extend(s.tokenizer().encode(" and", true).unwrap());
    let cont = s
        .generate(&longer, &params, |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(cont.cached_tokens >= prompt.len() + out.tokens.len() - 1);
    // Stop strings cut the text and are never streamed.
    let stop_at: String = out.text.chars().skip(3).take(2).collect();
    let mut streamed = String::new();
    let cut = s
        .generate(
            &prompt,
            &GenerateParams {
                stop: vec![stop_at.clone()],
                ..params.clone()
            },
            |t| {
                streamed.push_str(&t.text);
                ControlFlow::Continue(())
            },
        )
        .unwrap();
    assert_eq!(cut.stop, StopReason::StopString);
    assert_eq!(cut.text, out.text[..out.text.find(&stop_at).unwrap()]);
    assert_eq!(streamed, cut.text);
    // The caller can stop it.
    let stopped = s
        .generate(&prompt, &params, |t| {
            if t.index == 2 {
                ControlFlow::Break(())
            } else {
                ControlFlow::Continue(())
            }
        })
        .unwrap();
    assert_eq!(
        (stopped.stop, stopped.tokens.len()),
        (StopReason::Cancelled, 3)
    );
    // A prompt longer than the context fails clearly, or is truncated when asked.
    let long: Vec<u32> = (0..100).map(|i| i % 200).collect();
    let err = s
        .generate(&long, &params, |_| ControlFlow::Continue(()))
        .unwrap_err();
    assert!(err.to_string().contains("context is full"), "{err}");
    let trunc = s
        .generate(
            &long,
            &GenerateParams {
                truncate_prompt: true,
                ..params.clone()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert!(trunc.prompt_tokens < 64);
    // Generation that runs into the end of the cache says so.
    let full = s
        .generate(
            &long[..60],
            &GenerateParams {
                max_tokens: 50,
                ..params.clone()
            },
            |_| ControlFlow::Continue(()),
        )
        .unwrap();
    assert_eq!(full.stop, StopReason::ContextFull);
}

#[test]
fn issue_4_seeded_sampling_is_reproducible_across_formats() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q4_K).unwrap();
    let apr = convert(&gguf, Format::Apr, None, None, Compression::Zstd);
    let params = GenerateParams {
        max_tokens: 16,
        sampler: SamplerConfig {
            temperature: 1.2,
            seed: 42,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            ..SamplerConfig::default()
        },
        ignore_eos: true,
        ..GenerateParams::default()
    };
    let run = |bytes: &[u8], params: &GenerateParams| {
        let (model, tok) = session(bytes);
        let mut s = Session::new(Qwen2::load(&model, Cpu::new(2), 64).unwrap(), tok);
        let p = s.tokenizer().encode("the", true).unwrap();
        s.generate(&p, params, |_| ControlFlow::Continue(()))
            .unwrap()
            .tokens
    };
    let a = run(&gguf, &params);
    assert_eq!(a, run(&apr, &params));
    assert_eq!(a, run(&gguf, &params));
    let mut other = params.clone();
    other.sampler.seed = 7;
    assert_ne!(a, run(&gguf, &other));
}

#[test]
fn issue_5_f32_and_f16_caches_agree_closely_and_every_kernel_level_gives_the_same_logits() {
    use apr_core::backend::KvType;
    use apr_core::quant::simd::Isa;
    for ty in [
        GgmlType::Q5_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
        GgmlType::F32,
    ] {
        let gguf = synth::gguf(&Config::default(), ty).unwrap();
        let model = ModelFile::parse(&gguf).unwrap();
        let tokens: Vec<u32> = (0..40).map(|i| (i * 53 + 7) % 256).collect();
        let run = |cpu: Cpu, kv: KvType| {
            let mut q = Qwen2::load_with_cache(&model, cpu, 64, kv).unwrap();
            let mut out = q.forward(&tokens, Logits::Last).unwrap();
            out.extend(q.forward(&[5], Logits::Last).unwrap());
            out
        };
        let f16 = run(Cpu::new(2), KvType::F16);
        let f32 = run(Cpu::new(2), KvType::F32);
        assert_ne!(f16, f32, "{ty}: the cache type must change the arithmetic");
        assert!(
            max_diff(&f16, &f32) < 0.05,
            "{ty}: {}",
            max_diff(&f16, &f32)
        );
        // The scalar reference kernels and every SIMD level this machine has agree exactly,
        // prompt and decode, on one thread and two.
        for isa in Isa::available() {
            for threads in [1, 2] {
                let got = run(Cpu::with_isa(threads, isa), KvType::F16);
                assert_eq!(got, f16, "{ty} on {} with {threads} threads", isa.name());
            }
        }
    }
}

/// Two generations interleaved a token at a time, each in its own slot, give exactly what each
/// gives alone: the slots keep their sequences apart.
#[test]
fn issue_6_interleaved_slots_generate_what_each_would_alone() {
    let gguf = synth::gguf(&Config::default(), GgmlType::Q8_0).unwrap();
    let (model, tok) = session(&gguf);
    let params = |seed| GenerateParams {
        max_tokens: 20,
        sampler: SamplerConfig {
            seed,
            ..SamplerConfig::default()
        },
        ignore_eos: true,
        logprobs: Some(2),
        ..GenerateParams::default()
    };
    let prompts = [
        tok.encode("the cat is", true).unwrap(),
        tok.encode("a dog ran far away", true).unwrap(),
    ];
    let alone: Vec<_> = prompts
        .iter()
        .zip([7, 8])
        .map(|(p, seed)| {
            let mut s = Session::new(Qwen2::load(&model, Cpu::new(1), 64).unwrap(), tok.clone());
            let mut logprobs = Vec::new();
            let out = s
                .generate(p, &params(seed), |t| {
                    logprobs.extend(t.logprobs.clone());
                    ControlFlow::Continue(())
                })
                .unwrap();
            (out, logprobs)
        })
        .collect();

    let mut s = Session::new(Qwen2::load(&model, Cpu::new(1), 64).unwrap(), tok.clone());
    let mut other = s.new_slot().unwrap();
    // Slot A is in the session; B waits in `other`. Swap before each step of the other one.
    let mut a = s.start(&prompts[0], &params(7)).unwrap();
    s.swap_slot(&mut other).unwrap();
    let mut b = s.start(&prompts[1], &params(8)).unwrap();
    let mut logprobs = [Vec::new(), Vec::new()];
    let mut in_session = 1;
    while !(a.is_finished() && b.is_finished()) {
        for (i, g) in [&mut a, &mut b].into_iter().enumerate() {
            if g.is_finished() {
                continue;
            }
            if in_session != i {
                s.swap_slot(&mut other).unwrap();
                in_session = i;
            }
            if let Some(t) = s.step(g).unwrap() {
                logprobs[i].extend(t.logprobs);
            }
        }
    }
    for (i, g) in [a, b].into_iter().enumerate() {
        let out = g.into_outcome();
        assert_eq!(out, alone[i].0, "sequence {i}");
        assert_eq!(logprobs[i], alone[i].1, "sequence {i}");
        assert_eq!(logprobs[i].len(), 20);
        assert!(
            logprobs[i]
                .iter()
                .all(|l| l.top.len() == 2 && l.logprob <= 0.0)
        );
    }
    // A slot shaped for another model is refused.
    let small = Qwen2::load(&model, Cpu::new(1), 32).unwrap();
    let mut s2 = Session::new(small, tok);
    let mut wrong = s2.new_slot().unwrap();
    assert!(s.swap_slot(&mut wrong).is_err());
}

/// Several generations stepped together, their tokens evaluated in one batch, give exactly what
/// each gives alone, even as some finish before the others.
#[test]
fn issue_6_batched_slots_generate_what_each_would_alone() {
    for ty in [GgmlType::Q8_0, GgmlType::Q4_K, GgmlType::F16] {
        let gguf = synth::gguf(&Config::default(), ty).unwrap();
        let (model, tok) = session(&gguf);
        let cases = [
            ("the cat is", 20, 11, None),
            ("a dog ran far away", 7, 12, None),
            ("hello", 15, 13, Some("e")),
        ];
        let params = |max_tokens, seed, stop: Option<&str>| GenerateParams {
            max_tokens,
            sampler: SamplerConfig {
                seed,
                ..SamplerConfig::default()
            },
            stop: stop.into_iter().map(String::from).collect(),
            ignore_eos: true,
            logprobs: Some(1),
            ..GenerateParams::default()
        };
        let alone: Vec<_> = cases
            .iter()
            .map(|&(p, max, seed, stop)| {
                let mut s =
                    Session::new(Qwen2::load(&model, Cpu::new(2), 64).unwrap(), tok.clone());
                let mut pieces = Vec::new();
                let out = s
                    .generate(
                        &tok.encode(p, true).unwrap(),
                        &params(max, seed, stop),
                        |t| {
                            pieces.push(t.clone());
                            ControlFlow::Continue(())
                        },
                    )
                    .unwrap();
                (out, pieces)
            })
            .collect();

        let mut s = Session::new(Qwen2::load(&model, Cpu::new(2), 64).unwrap(), tok.clone());
        let mut slots: Vec<_> = cases.iter().map(|_| s.new_slot().unwrap()).collect();
        let mut gens: Vec<_> = cases
            .iter()
            .zip(&mut slots)
            .map(|(&(p, max, seed, stop), slot)| {
                s.swap_slot(slot).unwrap();
                let g = s
                    .start(&tok.encode(p, true).unwrap(), &params(max, seed, stop))
                    .unwrap();
                s.swap_slot(slot).unwrap();
                g
            })
            .collect();
        let mut pieces = vec![Vec::new(); cases.len()];
        loop {
            let live: Vec<usize> = (0..cases.len())
                .filter(|&i| !gens[i].is_finished())
                .collect();
            if live.is_empty() {
                break;
            }
            let mut batch: Vec<_> = slots
                .iter_mut()
                .zip(gens.iter_mut())
                .filter(|(_, g)| !g.is_finished())
                .collect();
            let tokens = s.step_each(&mut batch).unwrap();
            assert_eq!(tokens.len(), live.len());
            for (i, t) in live.into_iter().zip(tokens) {
                pieces[i].extend(t);
            }
        }
        for (i, g) in gens.into_iter().enumerate() {
            assert_eq!(g.into_outcome(), alone[i].0, "{ty} sequence {i}");
            assert_eq!(pieces[i], alone[i].1, "{ty} sequence {i}");
        }
    }
}
