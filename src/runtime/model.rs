//! [`Model`]: a loaded model (weights, tokenizer, chat template) shared by any number of sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::engine::{self, Backend};
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufWeights};
use crate::formats::hf::HfModelDir;
use crate::formats::FormatError;
use crate::model::{Llama, Precision};
use crate::template::{ChatTemplate, Message};
use crate::tokenizer::Tokenizer;

/// Load progress: called with the fraction loaded (0 to 1); returning `false` aborts the load.
pub type ProgressFn = Arc<dyn Fn(f32) -> bool + Send + Sync>;

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Compute backend (default: CPU).
    pub backend: Backend,
    /// Cap on the context length (positions per session). `None`: the model's trained context.
    pub max_context: Option<usize>,
    /// CPU threads for this model's computations (a pool of its own). `None`: the process-wide
    /// rayon pool (`RAYON_NUM_THREADS`, else one thread per core).
    pub threads: Option<usize>,
    /// Progress callback, called on the loading thread.
    pub progress: Option<ProgressFn>,
    /// Numerics of the forward pass (default [`Precision::Auto`]: block-quantized kernels for a
    /// quantized GGUF file on the CPU, exact f32 otherwise).
    pub precision: Precision,
    /// Read the model files into private memory instead of memory-mapping them while loading. A
    /// file that is changed or truncated on disk *during* loading then cannot fault the process
    /// (with a map it can, as with any mapped file); the cost is a copy of the file in memory at
    /// load time. After loading, neither way keeps the file.
    pub copy_file: bool,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("backend", &self.backend)
            .field("max_context", &self.max_context)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("precision", &self.precision)
            .field("copy_file", &self.copy_file)
            .finish()
    }
}

/// The on-disk form a model was loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelFormat {
    /// A single GGUF file.
    Gguf,
    /// A Hugging Face directory (`config.json`, safetensors, `tokenizer.json`).
    HuggingFace,
}

struct Inner {
    tokenizer: Tokenizer,
    template: Option<ChatTemplate>,
    backend: Backend,
    format: ModelFormat,
    path: PathBuf,
    context: usize,
    pool: Option<rayon::ThreadPool>,
    /// The token trie and grammar compiler of constrained decoding, built on first use.
    grammars: std::sync::OnceLock<Arc<llguidance::ParserFactory>>,
}

/// A loaded model: immutable, cheap to clone (reference-counted), `Send + Sync`.
/// Sessions keep their model alive.
#[derive(Clone)]
pub struct Model {
    inner: Arc<Inner>,
    /// Separate from `inner` so a merged copy shares the tokenizer, template and thread pool.
    llama: Arc<Llama>,
}

impl Model {
    /// Loads a GGUF file or a Hugging Face model directory (detected from `path`).
    ///
    /// # Errors
    /// Unreadable or malformed files ([`Error::Format`]), an unsupported architecture, a tokenizer that
    /// cannot be built, a backend that is not compiled in or has no device.
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Model> {
        let path = path.as_ref();
        if options.max_context == Some(0) {
            return Err(Error::InvalidArgument("max_context must be positive".into()));
        }
        let pool = match options.threads {
            None => None,
            Some(0) => return Err(Error::InvalidArgument("threads must be positive".into())),
            Some(n) => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(n)
                    .thread_name(|i| format!("agentlm-{i}"))
                    .build()
                    .map_err(|e| Error::InvalidArgument(format!("cannot start {n} threads: {e}")))?,
            ),
        };
        let progress = options.progress.clone();
        let mut report = move |f: f32| progress.as_ref().is_none_or(|p| p(f));
        if options.precision == Precision::Quantized && options.backend != Backend::Cpu {
            return Err(Error::InvalidArgument("quantized precision runs on the CPU backend only".into()));
        }
        if options.precision == Precision::Quantized && path.is_dir() {
            return Err(Error::InvalidArgument("quantized precision needs a GGUF file (a Hugging Face directory loads in f32)".into()));
        }
        let device = options.backend.device()?;
        type Loader<'a> = Box<dyn FnOnce(&LlamaConfig, usize, &mut dyn FnMut(f32) -> bool) -> Result<Llama> + Send + 'a>;
        let (format, config, tokenizer, template_src, llama_loader): (_, LlamaConfig, Tokenizer, Option<String>, Loader);
        if path.is_dir() {
            let dir = HfModelDir::open_with(path, options.copy_file)?;
            let tok_json = dir
                .tokenizer_json_path()
                .ok_or_else(|| FormatError::Invalid { path: path.to_path_buf(), reason: "no tokenizer.json in the model directory".into() })?;
            tokenizer = Tokenizer::from_hf_files(&tok_json, dir.tokenizer_config_path().as_deref())?;
            config = dir.config().clone();
            template_src = dir.chat_template().map(str::to_string).or_else(|| tokenizer.chat_template().map(str::to_string));
            format = ModelFormat::HuggingFace;
            let device = device.clone();
            llama_loader = Box::new(move |c, ctx, p| Ok(Llama::load_with_progress(&dir, c, &device, ctx, p)?));
        } else {
            let file = Arc::new(GgufFile::open_with(path, options.copy_file)?);
            tokenizer = Tokenizer::from_gguf(&file)?;
            let quantized = file.tensors().iter().any(|t| t.ggml_type.block_size() > 1);
            let weights = GgufWeights::new(file)?;
            config = weights.config().clone();
            template_src = tokenizer.chat_template().map(str::to_string);
            format = ModelFormat::Gguf;
            let device = device.clone();
            let fast = match options.precision {
                Precision::Exact => false,
                Precision::Quantized => true,
                Precision::Auto => options.backend == Backend::Cpu && quantized && Llama::quantized_path_supports(&config),
            };
            llama_loader = if fast {
                Box::new(move |c, ctx, p| Ok(Llama::load_quantized(&weights, c, &device, ctx, p)?))
            } else {
                Box::new(move |c, ctx, p| Ok(Llama::load_with_progress(&weights, c, &device, ctx, p)?))
            };
        }
        let context = options.max_context.unwrap_or(config.max_position_embeddings).min(config.max_position_embeddings).max(1);
        // The RoPE tables are built for every position at load: a file claiming a huge context must
        // fail here with an error, not abort in the allocator.
        let rope_bytes = context.checked_mul(config.head_dim).and_then(|n| n.checked_mul(2 * std::mem::size_of::<f32>()));
        ensure_fits(rope_bytes, || format!("the RoPE tables for a context of {context} positions (set LoadOptions.max_context to a smaller context)"))?;
        let template = match template_src {
            Some(src) => {
                let name = |id: Option<u32>| id.and_then(|i| tokenizer.id_to_token(i)).unwrap_or_default();
                let bos = name(tokenizer.bos_id());
                let eos = name(tokenizer.eos_ids().first().copied());
                Some(ChatTemplate::from_jinja(&src, &bos, &eos)?)
            }
            None => None,
        };
        let llama = match &pool {
            Some(pool) => pool.install(|| llama_loader(&config, context, &mut report)),
            None => llama_loader(&config, context, &mut report),
        }?;
        tracing::info!(path = %path.display(), backend = %options.backend, context, "model loaded");
        Ok(Model {
            llama: Arc::new(llama),
            inner: Arc::new(Inner {
                tokenizer,
                template,
                backend: options.backend,
                format,
                path: path.to_path_buf(),
                context,
                pool,
                grammars: std::sync::OnceLock::new(),
            }),
        })
    }

    /// Bytes of one session's KV cache for `capacity` positions (f32 keys and values of every layer);
    /// `None` if that overflows.
    pub fn kv_cache_bytes(&self, capacity: usize) -> Option<usize> {
        let c = self.config();
        [2, c.num_hidden_layers, c.num_key_value_heads, c.head_dim, std::mem::size_of::<f32>()].iter().try_fold(capacity, |n, &f| n.checked_mul(f))
    }

    /// Whether [`crate::train::Trainer`] runs on the host path (the quantized CPU path: frozen weights
    /// stay in their GGUF blocks) rather than on burn's autodiff (exact precision, wgpu, CUDA).
    pub fn trains_on_host(&self) -> bool {
        self.llama.trains_on_host()
    }

    /// Bytes of the transposed frozen weights host-path training holds for this model: built by its
    /// first trainer's first step, shared by its trainers, freed with the last (0 while none holds them).
    pub fn training_bytes(&self) -> usize {
        self.llama.training_bytes()
    }

    /// Hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        self.llama.config()
    }
    /// The tokenizer.
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.inner.tokenizer
    }
    /// The model's own chat template, when it ships one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.inner.template.as_ref()
    }
    /// Renders `messages` with the model's chat template (generation prompt appended).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model has no chat template; template errors.
    pub fn apply_chat_template(&self, messages: &[Message]) -> Result<String> {
        self.render_chat(messages, true)
    }
    /// Renders `messages` with the model's chat template, the generation prompt appended when asked.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the model has no chat template; template errors.
    pub fn render_chat(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        Ok(self.own_template()?.render(messages, add_generation_prompt)?)
    }
    /// The model's own chat template, or the error that says it has none.
    pub(crate) fn own_template(&self) -> Result<&ChatTemplate> {
        self.chat_template().ok_or_else(|| Error::InvalidArgument("the model has no chat template".into()))
    }
    /// The numerics the model computes with ([`Precision::Exact`] or [`Precision::Quantized`]).
    pub fn precision(&self) -> Precision {
        self.llama.precision()
    }
    /// The backend the weights live on.
    pub fn backend(&self) -> Backend {
        self.inner.backend
    }
    /// The file format it was loaded from.
    pub fn format(&self) -> ModelFormat {
        self.inner.format
    }
    /// The path it was loaded from.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }
    /// Longest context a session may hold.
    pub fn context_length(&self) -> usize {
        self.inner.context
    }
    /// CPU threads this model computes with.
    pub fn threads(&self) -> usize {
        self.inner.pool.as_ref().map_or_else(rayon::current_num_threads, |p| p.current_num_threads())
    }
    /// Runs `f` on this model's thread pool (the caller's pool when it has none of its own).
    pub(crate) fn compute<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        match &self.inner.pool {
            Some(pool) => pool.install(f),
            None => f(),
        }
    }
    /// llguidance's grammar compiler over this model's vocabulary (its token trie built from
    /// [`Tokenizer::token_bytes`]), built once per model and shared by every constrained agent.
    ///
    /// # Errors
    /// A vocabulary llguidance cannot read, or a model without an end-of-sequence token.
    pub fn grammar_factory(&self) -> Result<Arc<llguidance::ParserFactory>> {
        if let Some(f) = self.inner.grammars.get() {
            return Ok(f.clone());
        }
        let words = self.tokenizer().token_bytes(self.config().vocab_size)?;
        let eos = *self.tokenizer().eos_ids().first().ok_or_else(|| Error::InvalidArgument("constrained decoding needs an end-of-sequence token".into()))?;
        let mut info = llguidance::toktrie::TokRxInfo::new(words.len() as u32, eos);
        info.tok_bos = self.tokenizer().bos_id();
        let trie = llguidance::toktrie::TokTrie::from(&info, &words);
        let env: llguidance::toktrie::TokEnv = Arc::new(llguidance::toktrie::ApproximateTokEnv::new(trie));
        let mut factory = llguidance::ParserFactory::new_simple(&env).map_err(|e| Error::InvalidArgument(format!("constrained decoding: {e}")))?;
        factory.quiet();
        let factory = Arc::new(factory);
        Ok(self.inner.grammars.get_or_init(|| factory).clone())
    }
    pub(crate) fn llama(&self) -> &Llama {
        &self.llama
    }

    /// This model's tokenizer, template, pool and paths with other weights (a merged adapter).
    pub(super) fn with_llama(&self, llama: Llama) -> Model {
        Model { inner: self.inner.clone(), llama: Arc::new(llama) }
    }
}

/// [`engine::memory::fits`] as the crate's error ([`Error::InvalidArgument`]).
pub(crate) fn ensure_fits(bytes: Option<usize>, what: impl FnOnce() -> String) -> Result<()> {
    engine::memory::fits(bytes, what).map_err(Error::InvalidArgument)
}
