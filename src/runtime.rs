//! [`Model`]: a loaded model (weights, tokenizer, chat template) shared by any number of sessions.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::config::LlamaConfig;
use crate::engine::Backend;
use crate::adapter::Adapter;
use crate::error::{Error, Result};
use crate::formats::gguf::{GgufFile, GgufWeights};
use crate::formats::hf::HfModelDir;
use crate::formats::FormatError;
use crate::model::{Llama, Precision};
use crate::session::Session;
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
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("backend", &self.backend)
            .field("max_context", &self.max_context)
            .field("threads", &self.threads)
            .field("progress", &self.progress.is_some())
            .field("precision", &self.precision)
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
    /// [`Tokenizer::token_pieces`], computed on first use.
    pieces: std::sync::OnceLock<Arc<[Option<String>]>>,
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
            let dir = HfModelDir::open(path)?;
            let tok_json = dir.tokenizer_json_path().ok_or_else(|| FormatError::Invalid {
                path: path.to_path_buf(),
                reason: "no tokenizer.json in the model directory".into(),
            })?;
            tokenizer = Tokenizer::from_hf_files(&tok_json, dir.tokenizer_config_path().as_deref())?;
            config = dir.config().clone();
            template_src = dir.chat_template().map(str::to_string).or_else(|| tokenizer.chat_template().map(str::to_string));
            format = ModelFormat::HuggingFace;
            let device = device.clone();
            llama_loader = Box::new(move |c, ctx, p| Ok(Llama::load_with_progress(&dir, c, &device, ctx, p)?));
        } else {
            let file = Arc::new(GgufFile::open(path)?);
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
            inner: Arc::new(Inner { tokenizer, template, backend: options.backend, format, path: path.to_path_buf(), context, pool, pieces: std::sync::OnceLock::new() }),
        })
    }

    /// A new conversation with a KV cache for `capacity` positions (default and maximum: the context length).
    pub fn session(&self, capacity: Option<usize>) -> Session {
        Session::new(self.clone(), capacity.unwrap_or(self.inner.context).min(self.inner.context))
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
        let t = self.chat_template().ok_or_else(|| Error::InvalidArgument("the model has no chat template".into()))?;
        Ok(t.render(messages, true)?)
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
    /// The text of every token id ([`Tokenizer::token_pieces`]), computed once per model and shared.
    ///
    /// # Errors
    /// Decoding errors.
    pub fn token_pieces(&self) -> Result<Arc<[Option<String>]>> {
        if let Some(p) = self.inner.pieces.get() {
            return Ok(p.clone());
        }
        let pieces: Arc<[Option<String>]> = self.tokenizer().token_pieces(self.config().vocab_size)?.into();
        Ok(self.inner.pieces.get_or_init(|| pieces).clone())
    }
    pub(crate) fn llama(&self) -> &Llama {
        &self.llama
    }

    /// A model with `adapter` merged into its weights at `scale`: the adapter's outputs at the base
    /// model's speed. It shares the tokenizer, template and thread pool with `self`; the targeted
    /// weights are new (memory: one more copy of those matrices).
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] when the adapter belongs to a model of another shape or device.
    pub fn merged(&self, adapter: &Adapter, scale: f32) -> Result<Model> {
        adapter.check_model(self)?;
        let llama = self.compute(|| self.llama.merged(adapter.weights(), scale));
        Ok(Model { inner: self.inner.clone(), llama: Arc::new(llama) })
    }
}
