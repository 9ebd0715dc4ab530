//! The qwen2 forward pass, written once over [`Backend`].
//!
//! Per block: RMSNorm, Q/K/V projections with biases, NeoX RoPE, causal grouped-query attention
//! over the KV cache, output projection, residual; RMSNorm, SwiGLU FFN, residual. Then the final
//! norm and the LM head (`output.weight`, or the embedding table when tied).
//!
//! Prompts are evaluated in batches of up to [`BATCH`] positions (fewer where the backend's
//! buffers are small), so each weight row is read once per batch rather than once per token.
//! Every buffer is allocated when the model is built and
//! written in place afterwards.

use alloc::format;
use alloc::vec::Vec;

use super::config::{Config, MAX_CONTEXT};
use crate::backend::{AttnShape, Backend, KvType, MatrixData, decode_vector, resolve_now};
use crate::format::model::ModelFile;
use crate::{Error, Result};

/// Positions evaluated per forward step of a prompt: llama.cpp's default micro-batch
/// (`n_ubatch`), so a prompt reaches the matrix products in the same batches as there. That
/// matters beyond speed: which K-quant kernel llama.cpp runs, and so the order of its sums,
/// depends on the batch size. Buffers are sized for it but only the rows a step uses are
/// touched.
pub const BATCH: usize = 512;

/// The operations a forward pass reports to an [`Observer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Op {
    /// Token embedding lookup.
    Embed,
    /// RMSNorm (attention, FFN and final).
    RmsNorm,
    /// Q, K and V projections with their biases.
    Qkv,
    /// Rotary position embedding.
    Rope,
    /// Writing K and V into the cache.
    KvStore,
    /// Attention over the cache.
    Attention,
    /// The attention output projection.
    AttnOutput,
    /// FFN gate and up projections.
    FfnGateUp,
    /// SwiGLU activation.
    SiluMul,
    /// FFN down projection.
    FfnDown,
    /// Residual additions.
    Residual,
    /// The LM head.
    LmHead,
}

impl Op {
    /// Every op, in forward order.
    pub const ALL: [Op; 12] = [
        Op::Embed,
        Op::RmsNorm,
        Op::Qkv,
        Op::Rope,
        Op::KvStore,
        Op::Attention,
        Op::AttnOutput,
        Op::FfnGateUp,
        Op::SiluMul,
        Op::FfnDown,
        Op::Residual,
        Op::LmHead,
    ];

    /// A stable snake_case name for reports.
    pub const fn name(self) -> &'static str {
        match self {
            Op::Embed => "embed",
            Op::RmsNorm => "rms_norm",
            Op::Qkv => "qkv",
            Op::Rope => "rope",
            Op::KvStore => "kv_store",
            Op::Attention => "attention",
            Op::AttnOutput => "attn_output",
            Op::FfnGateUp => "ffn_gate_up",
            Op::SiluMul => "silu_mul",
            Op::FfnDown => "ffn_down",
            Op::Residual => "residual",
            Op::LmHead => "lm_head",
        }
    }
}

/// Watches a forward pass: op boundaries (for timing) and each block's output.
pub trait Observer {
    /// An op starts.
    fn enter(&mut self, op: Op);
    /// The op that last started has finished.
    fn exit(&mut self, op: Op);
    /// Whether [`Observer::hidden`] should be called (it costs a read-back).
    fn wants_hidden(&self) -> bool {
        false
    }
    /// The hidden state of the first position of the batch after the embedding (`layer` 0) and
    /// after each block (`layer` i + 1).
    fn hidden(&mut self, _layer: usize, _values: &[f32]) {}
}

/// The observer of an unobserved pass.
struct Unobserved;

impl Observer for Unobserved {
    fn enter(&mut self, _: Op) {}
    fn exit(&mut self, _: Op) {}
}

/// Which logits a forward step returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position's.
    Last,
    /// Every position's, row after row.
    All,
}

struct Block<'w, B: Backend> {
    attn_norm: B::Buf,     // [hidden]
    wq: B::Matrix<'w>,     // [hidden, hidden]
    bq: B::Buf,            // [hidden]
    wk: B::Matrix<'w>,     // [kv_width, hidden]
    bk: B::Buf,            // [kv_width]
    wv: B::Matrix<'w>,     // [kv_width, hidden]
    bv: B::Buf,            // [kv_width]
    wo: B::Matrix<'w>,     // [hidden, hidden]
    ffn_norm: B::Buf,      // [hidden]
    w_gate: B::Matrix<'w>, // [ffn, hidden]
    w_up: B::Matrix<'w>,   // [ffn, hidden]
    w_down: B::Matrix<'w>, // [hidden, ffn]
}

/// The keys and values of one sequence, for every layer, and how many positions they hold. A
/// [`Qwen2`] attends over the cache it holds; a server keeps one per request slot and swaps them
/// in and out with [`Qwen2::swap_cache`], so the weights are shared and each sequence keeps its
/// own context.
pub struct KvCache<B: Backend> {
    layers: Vec<(B::Cache, B::Cache)>, // per layer: keys, values, each [ctx, kv_width]
    ctx: usize,
    kv_type: KvType,
    pos: usize,
}

impl<B: Backend> core::fmt::Debug for KvCache<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KvCache")
            .field("layers", &self.layers.len())
            .field("ctx", &self.ctx)
            .field("kv_type", &self.kv_type)
            .field("pos", &self.pos)
            .finish()
    }
}

impl<B: Backend> KvCache<B> {
    fn new(backend: &mut B, config: &Config, ctx: usize, kv_type: KvType) -> Result<Self> {
        let len = ctx * config.kv_width();
        let layers = (0..config.layers)
            .map(|_| Ok((backend.cache(len, kv_type)?, backend.cache(len, kv_type)?)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            ctx,
            kv_type,
            pos: 0,
        })
    }

    /// Positions evaluated into this cache.
    pub fn position(&self) -> usize {
        self.pos
    }
}

/// Activations for one batch, allocated once.
struct Scratch<B: Backend> {
    x: B::Buf,      // [batch, hidden] residual stream
    xn: B::Buf,     // [batch, hidden] normed
    q: B::Buf,      // [batch, hidden]
    k: B::Buf,      // [batch, kv_width]
    v: B::Buf,      // [batch, kv_width]
    att: B::Buf,    // [batch, hidden]
    proj: B::Buf,   // [batch, hidden] attention / FFN output projections
    gate: B::Buf,   // [batch, ffn]
    up: B::Buf,     // [batch, ffn]
    logits: B::Buf, // [batch, vocab]
    // One row of a batch of sequences, moved out to attend over its own cache.
    q1: B::Buf,   // [hidden]
    k1: B::Buf,   // [kv_width]
    v1: B::Buf,   // [kv_width]
    att1: B::Buf, // [hidden]
}

/// Where a forward step's rows go in the KV cache.
enum Rows<'a, 'c, B: Backend> {
    /// Consecutive positions of the model's own sequence.
    Own,
    /// Row i is the next position of `caches[i]`.
    Each(&'a mut [&'c mut KvCache<B>]),
}

/// A loaded qwen2 model with its KV cache.
pub struct Qwen2<'w, B: Backend> {
    config: Config,
    backend: B,
    ctx: usize,
    cache: KvCache<B>,
    embed: B::Matrix<'w>,           // [vocab, hidden]
    lm_head: Option<B::Matrix<'w>>, // [vocab, hidden]; None when tied to `embed`
    output_norm: B::Buf,            // [hidden]
    blocks: Vec<Block<'w, B>>,
    batch: usize, // positions per step: BATCH, or fewer where the backend's buffers are small
    s: Scratch<B>,
}

impl<'w, B: Backend> core::fmt::Debug for Qwen2<'w, B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Qwen2")
            .field("config", &self.config)
            .field("backend", &self.backend.name())
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

fn tensor_error(name: &str, why: &str) -> Error {
    Error::Invalid(format!("tensor {name}: {why}"))
}

fn matrix<'w, B: Backend>(
    backend: &mut B,
    model: &ModelFile<'w>,
    name: &str,
    rows: usize,
    cols: usize,
) -> Result<B::Matrix<'w>> {
    let t = model
        .tensor(name)
        .ok_or_else(|| tensor_error(name, "missing"))?;
    if t.shape != [rows as u64, cols as u64] {
        return Err(tensor_error(
            name,
            &format!("shape {:?}, expected [{rows}, {cols}]", t.shape),
        ));
    }
    backend.matrix(MatrixData {
        name: name.into(),
        dtype: t.dtype,
        rows,
        cols,
        bytes: t.decode()?,
    })
}

fn vector<B: Backend>(
    backend: &mut B,
    model: &ModelFile<'_>,
    name: &str,
    len: usize,
) -> Result<B::Buf> {
    let t = model
        .tensor(name)
        .ok_or_else(|| tensor_error(name, "missing"))?;
    if t.shape != [len as u64] {
        return Err(tensor_error(
            name,
            &format!("shape {:?}, expected [{len}]", t.shape),
        ));
    }
    let v = decode_vector(t.dtype, &t.decode()?, len)
        .map_err(|e| tensor_error(name, &format!("{e}")))?;
    backend.upload(&v)
}

impl<'w, B: Backend> Qwen2<'w, B> {
    /// Builds the model from a parsed file, with an f16 KV cache for `ctx` positions. Weights
    /// stay in their stored type; raw tensors are borrowed from the file's bytes.
    pub fn load(model: &ModelFile<'w>, backend: B, ctx: usize) -> Result<Self> {
        Self::load_with_cache(model, backend, ctx, KvType::F16)
    }

    /// [`Qwen2::load`] with the KV cache stored as `kv_type`.
    pub fn load_with_cache(
        model: &ModelFile<'w>,
        mut backend: B,
        ctx: usize,
        kv_type: KvType,
    ) -> Result<Self> {
        let config = Config::from_model(model)?;
        if ctx == 0 || ctx > MAX_CONTEXT {
            return Err(Error::Invalid(format!(
                "a context of {ctx} positions is out of range (1 to {MAX_CONTEXT})"
            )));
        }
        let Config {
            layers,
            hidden,
            ffn,
            vocab,
            ..
        } = config;
        let kv = config.kv_width();
        let b = &mut backend;
        let embed = matrix(b, model, "token_embd.weight", vocab, hidden)?;
        let lm_head = if config.tied {
            None
        } else {
            Some(matrix(b, model, "output.weight", vocab, hidden)?)
        };
        let output_norm = vector(b, model, "output_norm.weight", hidden)?;
        let mut blocks = Vec::with_capacity(layers);
        for i in 0..layers {
            let n = |s: &str| format!("blk.{i}.{s}");
            blocks.push(Block {
                attn_norm: vector(b, model, &n("attn_norm.weight"), hidden)?,
                wq: matrix(b, model, &n("attn_q.weight"), hidden, hidden)?,
                bq: vector(b, model, &n("attn_q.bias"), hidden)?,
                wk: matrix(b, model, &n("attn_k.weight"), kv, hidden)?,
                bk: vector(b, model, &n("attn_k.bias"), kv)?,
                wv: matrix(b, model, &n("attn_v.weight"), kv, hidden)?,
                bv: vector(b, model, &n("attn_v.bias"), kv)?,
                wo: matrix(b, model, &n("attn_output.weight"), hidden, hidden)?,
                ffn_norm: vector(b, model, &n("ffn_norm.weight"), hidden)?,
                w_gate: matrix(b, model, &n("ffn_gate.weight"), ffn, hidden)?,
                w_up: matrix(b, model, &n("ffn_up.weight"), ffn, hidden)?,
                w_down: matrix(b, model, &n("ffn_down.weight"), hidden, ffn)?,
            });
        }
        let cache = KvCache::new(b, &config, ctx, kv_type)?;
        let batch = BATCH.min(b.max_buffer_len() / vocab.max(1)).max(1);
        let s = Scratch {
            x: b.zeros(batch * hidden)?,
            xn: b.zeros(batch * hidden)?,
            q: b.zeros(batch * hidden)?,
            k: b.zeros(batch * kv)?,
            v: b.zeros(batch * kv)?,
            att: b.zeros(batch * hidden)?,
            proj: b.zeros(batch * hidden)?,
            gate: b.zeros(batch * ffn)?,
            up: b.zeros(batch * ffn)?,
            logits: b.zeros(batch * vocab)?,
            q1: b.zeros(hidden)?,
            k1: b.zeros(kv)?,
            v1: b.zeros(kv)?,
            att1: b.zeros(hidden)?,
        };
        Ok(Self {
            config,
            backend,
            ctx,
            cache,
            embed,
            lm_head,
            output_norm,
            blocks,
            batch,
            s,
        })
    }

    /// How the KV cache stores keys and values.
    pub fn kv_type(&self) -> KvType {
        self.cache.kv_type
    }

    /// The model's shape.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// Positions the KV cache holds.
    pub fn context_size(&self) -> usize {
        self.ctx
    }

    /// The backend, to ask it for its own measurements.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Positions evaluated per step: [`BATCH`], or fewer where the backend's buffers cannot hold
    /// that many rows of logits.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Positions already evaluated (the next token goes at this position).
    pub fn position(&self) -> usize {
        self.cache.pos
    }

    /// Forgets every position from `len` on; the next token goes at `len`.
    pub fn truncate(&mut self, len: usize) {
        self.cache.pos = self.cache.pos.min(len);
    }

    /// A new, empty KV cache shaped like the model's own, to swap in with
    /// [`Qwen2::swap_cache`].
    pub fn new_cache(&mut self) -> Result<KvCache<B>> {
        KvCache::new(
            &mut self.backend,
            &self.config,
            self.ctx,
            self.cache.kv_type,
        )
    }

    /// Exchanges the model's KV cache with `cache`: the model goes on from `cache`'s positions,
    /// and `cache` keeps the sequence the model held. Fails, changing nothing, for a cache shaped
    /// for another model.
    pub fn swap_cache(&mut self, cache: &mut KvCache<B>) -> Result<()> {
        self.fits(cache)?;
        core::mem::swap(&mut self.cache, cache);
        Ok(())
    }

    /// Whether `cache` is shaped for this model.
    fn fits(&self, cache: &KvCache<B>) -> Result<()> {
        let ours = &self.cache;
        if cache.layers.len() != ours.layers.len()
            || cache.ctx != ours.ctx
            || cache.kv_type != ours.kv_type
        {
            return Err(Error::Invalid(format!(
                "a KV cache of {} layers, {} positions and {:?} does not fit a model with {} \
                 layers, {} positions and {:?}",
                cache.layers.len(),
                cache.ctx,
                cache.kv_type,
                ours.layers.len(),
                ours.ctx,
                ours.kv_type
            )));
        }
        Ok(())
    }

    /// Evaluates `tokens` at the next positions and returns their logits (`[vocab]` for
    /// [`Logits::Last`], `[tokens.len(), vocab]` for [`Logits::All`]).
    pub fn forward(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.forward_observed(tokens, which, None)
    }

    /// [`Qwen2::forward`] reporting to `observer`.
    pub fn forward_observed(
        &mut self,
        tokens: &[u32],
        which: Logits,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        resolve_now(self.forward_observed_async(tokens, which, observer))
    }

    /// [`Qwen2::forward`] on a backend whose reads are awaited (WebGPU in the browser).
    pub async fn forward_async(&mut self, tokens: &[u32], which: Logits) -> Result<Vec<f32>> {
        self.forward_observed_async(tokens, which, None).await
    }

    async fn forward_observed_async(
        &mut self,
        tokens: &[u32],
        which: Logits,
        observer: Option<&mut dyn Observer>,
    ) -> Result<Vec<f32>> {
        let mut quiet = Unobserved;
        let obs: &mut dyn Observer = match observer {
            Some(o) => o,
            None => &mut quiet,
        };
        self.fits_tokens(tokens)?;
        let vocab = self.config.vocab;
        let mut out = Vec::with_capacity(match which {
            Logits::Last => vocab,
            Logits::All => tokens.len() * vocab,
        });
        let chunks = tokens.chunks(self.batch);
        let last = chunks.len() - 1;
        for (c, chunk) in chunks.enumerate() {
            let rows = chunk.len();
            let logit_rows = match which {
                Logits::All => rows,
                Logits::Last if c == last => 1,
                Logits::Last => 0,
            };
            self.step(chunk, logit_rows, Rows::Own, obs)?;
            let logits = self
                .backend
                .read_async(&self.s.logits, 0, logit_rows * vocab)
                .await?;
            out.extend_from_slice(&logits);
        }
        Ok(out)
    }

    /// Evaluates `tokens` at the next positions and returns the index of the last position's
    /// largest logit (the greedy choice), computed by the backend: a GPU reads back 4 bytes, not
    /// the vocabulary's logits.
    pub fn forward_greedy(&mut self, tokens: &[u32]) -> Result<u32> {
        resolve_now(self.forward_greedy_async(tokens))
    }

    /// [`Qwen2::forward_greedy`] on a backend whose reads are awaited (WebGPU in the browser).
    pub async fn forward_greedy_async(&mut self, tokens: &[u32]) -> Result<u32> {
        self.fits_tokens(tokens)?;
        let chunks = tokens.chunks(self.batch);
        let last = chunks.len() - 1;
        for (c, chunk) in chunks.enumerate() {
            let logit_rows = usize::from(c == last);
            self.step(chunk, logit_rows, Rows::Own, &mut Unobserved)?;
        }
        let ids = self
            .backend
            .argmax_async(&self.s.logits, 1, self.config.vocab)
            .await?;
        ids.first()
            .copied()
            .ok_or_else(|| Error::Invalid("internal: no argmax came back".into()))
    }

    /// Whether `tokens` can be evaluated next: at least one, and room in the context.
    fn fits_tokens(&self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Err(Error::Invalid("nothing to evaluate: no tokens".into()));
        }
        let need = self.cache.pos.saturating_add(tokens.len());
        if need > self.ctx {
            return Err(Error::ContextFull {
                need,
                ctx: self.ctx,
            });
        }
        Ok(())
    }

    /// Evaluates one token for each of several sequences together: `tokens[i]` goes at the next
    /// position of `caches[i]`. Every weight matrix is read once for all of them, as for a
    /// prompt's batch, while each row attends over its own cache; the model's own cache is not
    /// touched. Returns the logits, `[tokens.len(), vocab]`, the same as evaluating each token
    /// alone.
    pub fn forward_each(
        &mut self,
        tokens: &[u32],
        caches: &mut [&mut KvCache<B>],
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() || tokens.len() > self.batch || tokens.len() != caches.len() {
            return Err(Error::Invalid(format!(
                "{} tokens for {} caches: one token per cache, 1 to {}",
                tokens.len(),
                caches.len(),
                self.batch
            )));
        }
        for cache in caches.iter() {
            self.fits(cache)?;
            if cache.pos >= self.ctx {
                return Err(Error::ContextFull {
                    need: cache.pos + 1,
                    ctx: self.ctx,
                });
            }
        }
        let n = tokens.len();
        self.step(tokens, n, Rows::Each(caches), &mut Unobserved)?;
        let mut out = alloc::vec![0.0; n * self.config.vocab];
        self.backend.read(&self.s.logits, 0, &mut out)?;
        Ok(out)
    }

    /// One batch of up to [`BATCH`] positions; the logits of the last `logit_rows` rows land in
    /// `s.logits`.
    fn step(
        &mut self,
        tokens: &[u32],
        logit_rows: usize,
        mut seqs: Rows<'_, '_, B>,
        obs: &mut dyn Observer,
    ) -> Result<()> {
        let Config {
            hidden,
            heads,
            kv_heads,
            head_dim,
            ffn,
            eps,
            rope_theta,
            ..
        } = self.config;
        let kv = self.config.kv_width();
        let rows = tokens.len();
        let pos0 = self.cache.pos;
        let bk = &mut self.backend;
        let s = &mut self.s;

        macro_rules! op {
            ($op:expr, $body:expr) => {{
                obs.enter($op);
                let r: Result<()> = $body;
                r?;
                obs.exit($op);
            }};
        }
        let mut first_row = Vec::new();
        let mut report =
            |bk: &mut B, x: &B::Buf, layer: usize, obs: &mut dyn Observer| -> Result<()> {
                if obs.wants_hidden() {
                    first_row.resize(hidden, 0.0);
                    bk.read(x, 0, &mut first_row)?;
                    obs.hidden(layer, &first_row);
                }
                Ok(())
            };

        op!(Op::Embed, bk.embed(&self.embed, tokens, &mut s.x));
        report(bk, &s.x, 0, obs)?;
        for (l, b) in self.blocks.iter().enumerate() {
            op!(
                Op::RmsNorm,
                bk.rms_norm(&s.x, &b.attn_norm, eps, rows, &mut s.xn)
            );
            op!(Op::Qkv, {
                bk.matmuls(
                    &[&b.wq, &b.wk, &b.wv],
                    &s.xn,
                    rows,
                    &mut [&mut s.q, &mut s.k, &mut s.v],
                )?;
                bk.add_bias(&mut s.q, &b.bq, rows)?;
                bk.add_bias(&mut s.k, &b.bk, rows)?;
                bk.add_bias(&mut s.v, &b.bv, rows)
            });
            match &mut seqs {
                Rows::Own => {
                    let (k_cache, v_cache) = &mut self.cache.layers[l];
                    op!(Op::Rope, {
                        bk.rope(&mut s.q, rows, heads, head_dim, pos0, rope_theta)?;
                        bk.rope(&mut s.k, rows, kv_heads, head_dim, pos0, rope_theta)
                    });
                    op!(Op::KvStore, {
                        bk.store(&s.k, k_cache, pos0, rows, kv)?;
                        bk.store(&s.v, v_cache, pos0, rows, kv)
                    });
                    let shape = AttnShape {
                        rows,
                        pos0,
                        heads,
                        kv_heads,
                        head_dim,
                    };
                    op!(
                        Op::Attention,
                        bk.attention(&s.q, k_cache, v_cache, shape, &mut s.att)
                    );
                }
                Rows::Each(caches) => {
                    // Each row on its own: its position, its cache.
                    for (i, cache) in caches.iter_mut().enumerate() {
                        let pos = cache.pos;
                        let (k_cache, v_cache) = &mut cache.layers[l];
                        bk.copy_rows(&s.q, i, &mut s.q1, 0, 1, hidden)?;
                        bk.copy_rows(&s.k, i, &mut s.k1, 0, 1, kv)?;
                        bk.copy_rows(&s.v, i, &mut s.v1, 0, 1, kv)?;
                        bk.rope(&mut s.q1, 1, heads, head_dim, pos, rope_theta)?;
                        bk.rope(&mut s.k1, 1, kv_heads, head_dim, pos, rope_theta)?;
                        bk.store(&s.k1, k_cache, pos, 1, kv)?;
                        bk.store(&s.v1, v_cache, pos, 1, kv)?;
                        let shape = AttnShape {
                            rows: 1,
                            pos0: pos,
                            heads,
                            kv_heads,
                            head_dim,
                        };
                        bk.attention(&s.q1, k_cache, v_cache, shape, &mut s.att1)?;
                        bk.copy_rows(&s.att1, 0, &mut s.att, i, 1, hidden)?;
                    }
                }
            }
            op!(Op::AttnOutput, bk.matmul(&b.wo, &s.att, rows, &mut s.proj));
            op!(Op::Residual, bk.add(&mut s.x, &s.proj, rows * hidden));
            op!(
                Op::RmsNorm,
                bk.rms_norm(&s.x, &b.ffn_norm, eps, rows, &mut s.xn)
            );
            op!(Op::FfnGateUp, {
                bk.matmuls(
                    &[&b.w_gate, &b.w_up],
                    &s.xn,
                    rows,
                    &mut [&mut s.gate, &mut s.up],
                )
            });
            op!(Op::SiluMul, bk.silu_mul(&mut s.gate, &s.up, rows * ffn));
            op!(
                Op::FfnDown,
                bk.matmul(&b.w_down, &s.gate, rows, &mut s.proj)
            );
            op!(Op::Residual, bk.add(&mut s.x, &s.proj, rows * hidden));
            report(bk, &s.x, l + 1, obs)?;
        }
        match &mut seqs {
            Rows::Own => self.cache.pos = pos0 + rows,
            Rows::Each(caches) => caches.iter_mut().for_each(|c| c.pos += 1),
        }
        if logit_rows == 0 {
            return Ok(());
        }
        // Only the rows whose logits are wanted go through the LM head.
        op!(
            Op::RmsNorm,
            bk.rms_norm(&s.x, &self.output_norm, eps, rows, &mut s.xn)
        );
        let skip = rows - logit_rows;
        let normed = if skip == 0 {
            &s.xn
        } else {
            bk.copy_rows(&s.xn, skip, &mut s.att, 0, logit_rows, hidden)?;
            &s.att
        };
        let head = self.lm_head.as_ref().unwrap_or(&self.embed);
        op!(
            Op::LmHead,
            bk.matmul(head, normed, logit_rows, &mut s.logits)
        );
        Ok(())
    }
}
