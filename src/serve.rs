//! `layerstream serve`: validate the file, start the loader thread, bind, build the tokenizer,
//! start the engine, and serve — READY as soon as the embeddings and layer 0 are resident.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::backend::cpu::CpuModel;
use crate::backend::step::BatchRequest;
use crate::backend::{self, cuda, Backend, DeviceChoice};
use crate::chat_template::ChatTemplate;
use crate::cli::progress_bar::LoadBar;
use crate::config::{default_model, Device, ServeArgs};
use crate::engine::{self, EngineConfig};
use crate::gguf::GgufFile;
use crate::load::loader::{self, LoadJob, LoaderOptions};
use crate::load::plan::LoadPlan;
use crate::load::progress::{LoadState, Progress};
use crate::model::ModelSpec;
use crate::request::Limits;
use crate::server::access::AccessPolicy;
use crate::server::answer_size::{AnswerBounds, AnswerCap};
use crate::server::callback::{self, Callbacks, Event, Notice, Worker};
use crate::server::cors::Origins;
use crate::server::hosts::AllowedHosts;
use crate::server::{self, AppState, ModelInfo, Runtime};
use crate::tokenizer::Tokenizer;

/// How long running requests may continue after SIGTERM/SIGINT.
const DRAIN: Duration = Duration::from_secs(10);
/// How long the exit waits for the engine thread to finish its request and release its sequence.
const ENGINE_CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long an exit on a failure waits for the `failed` callback (and any notice queued before
/// it): enough for every retry to a receiver that refuses connections.
const FAILED_CALLBACK_WAIT: Duration = Duration::from_secs(10);

pub fn run(args: ServeArgs, started: Instant) -> ExitCode {
    let callbacks = args.callback_url.as_deref().and_then(|url| {
        Callbacks::start(url)
            .map_err(|e| tracing::error!("{e}; no callbacks will be sent"))
            .ok()
    });
    let startup_worker = Worker {
        worker_id: args.worker_id.clone(),
        uri: configured_uri(&args),
    };
    let outcome = start(args, started, callbacks.clone());
    if let Err(e) = &outcome {
        tracing::error!("{e}");
        eprintln!("error: {e}");
        if let Some(cb) = &callbacks {
            report_failure(cb, startup_worker, e);
        }
    }
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::from(1),
    }
}

/// Before exiting on a failure: report it unless the load already did, and give the queue a
/// bounded time to deliver it (with its retries).
fn report_failure(callbacks: &Callbacks, worker: Worker, error: &str) {
    if !callbacks.failed_pushed() {
        callbacks.push(Notice {
            event: Event::Failed {
                error: error.to_string(),
            },
            worker_id: worker.worker_id,
            uri: worker.uri,
            vram_bytes: 0,
            ready_ms: None,
        });
    }
    if !callbacks.flush(FAILED_CALLBACK_WAIT) {
        tracing::warn!(
            "the failed callback was not delivered within {FAILED_CALLBACK_WAIT:?}; exiting anyway"
        );
    }
}

/// The `uri` a failure before binding reports: the advertised URL, else the configured address.
fn configured_uri(args: &ServeArgs) -> String {
    match &args.advertise_url {
        Some(u) => u.clone(),
        None if args.host.contains(':') => format!("http://[{}]:{}", args.host, args.port),
        None => format!("http://{}:{}", args.host, args.port),
    }
}

fn start(args: ServeArgs, started: Instant, callbacks: Option<Callbacks>) -> Result<(), String> {
    let path: PathBuf = match &args.model {
        Some(p) => p.clone(),
        None if default_model().is_file() => default_model(),
        None => return Err(format!("no --model given and the default model {} does not exist (run scripts/fetch-test-model)", default_model().display())),
    };
    // Driver initialisation and context creation overlap opening the file.
    if args.device != Device::Cpu {
        cuda::prewarm(args.gpu_device);
    }
    // The whole index is validated before anything else: a bad file never reaches READY.
    let file = Arc::new(GgufFile::open(&path).map_err(|e| format!("{}: {e}", path.display()))?);
    // The tokenizer build (~0.25 s for Qwen2's 151k merges) is the longest step before READY on a
    // GPU: it starts now, alongside validation, device probing and the load.
    let tokenizer = {
        let file = file.clone();
        std::thread::Builder::new()
            .name("tokenizer".into())
            .spawn(move || build_tokenizer(&file))
            .map_err(|e| format!("cannot start the tokenizer thread: {e}"))?
    };
    let spec = ModelSpec::from_file(&file).map_err(|e| format!("{}: {e}", path.display()))?;
    let plan = LoadPlan::new(&file, &spec);
    let progress = Arc::new(Progress::new(&plan, started));
    let ctx = args.ctx_size.clamp(1, spec.hp.context);
    tracing::info!(model = %path.display(), layers = spec.hp.n_layer, bytes = plan.total_bytes(), ctx, "loading");
    let model = start_backend(&args, &file, &spec, plan, &progress, ctx)?;
    let engine_opts = EngineOptions {
        batch: args.batch_request(ctx, model.name() == "cuda"),
        max_queue: args.max_queue,
        request_timeout: args.request_timeout.map(Duration::from_secs_f64),
        max_answer_bytes: args.max_answer_bytes,
    };
    if args.kv_cache_tokens.is_some_and(|t| (t as usize) < ctx) {
        tracing::warn!("--kv-cache-tokens is below the context size; the pool holds {ctx} tokens, one whole sequence");
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    rt.block_on(serve(Loading {
        args,
        path,
        ctx,
        progress,
        model,
        tokenizer,
        engine_opts,
        callbacks,
    }))
}

/// What startup hands the async part of `serve`.
struct Loading {
    args: ServeArgs,
    path: PathBuf,
    ctx: usize,
    progress: Arc<Progress>,
    model: Arc<dyn Backend>,
    tokenizer: TokenizerThread,
    engine_opts: EngineOptions,
    callbacks: Option<Callbacks>,
}

/// The tokenizer thread's handle.
type TokenizerThread = std::thread::JoinHandle<Result<(Tokenizer, ChatTemplate), String>>;

/// Bind, serve until stopped, then close everything in order.
async fn serve(l: Loading) -> Result<(), String> {
    let Loading {
        args,
        path,
        ctx,
        progress,
        model,
        tokenizer,
        engine_opts,
        callbacks,
    } = l;
    // Signals are caught from the start, so SIGTERM during startup is an orderly exit too.
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(watch_signals(Signals::install()?, stop_tx.clone()));
    let addr = format!("{}:{}", args.host, args.port);
    // (host, port) rather than "host:port", so an IPv6 host such as ::1 binds too.
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("cannot bind {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    println!("listening on http://{local}");
    tracing::info!("listening on http://{local}");
    progress.listener_bound();
    let state = app_state(&args, &path, ctx, &progress, stop_rx.clone(), local);
    // HTTP is served at once; the runtime (tokenizer, engine) arrives before READY.
    let startup_error = Arc::new(parking_lot::Mutex::new(None));
    let build = {
        let (state, model, err, stop) = (
            state.clone(),
            model.clone(),
            startup_error.clone(),
            stop_tx.clone(),
        );
        async move {
            if let Err(e) = build_runtime(&state, tokenizer, model, ctx, engine_opts).await {
                tracing::error!("{e}");
                state.progress.fail(e.clone());
                *err.lock() = Some(e);
                let _ = stop.send(true);
            }
        }
    };
    let building = tokio::spawn(build);
    let reporting = follow_load(&args, local, &progress, &model, callbacks);
    if args.exit_on_load_failure {
        tokio::spawn(exit_on_failure(
            progress.clone(),
            startup_error.clone(),
            stop_tx.clone(),
        ));
    }
    let backend = model.clone();
    tokio::spawn(drain_on_stop(state.clone(), model, stop_rx.clone()));
    server::run(
        listener,
        state.clone(),
        stopped(stop_rx),
        DRAIN + Duration::from_secs(1),
        server::Limits {
            max_connections: args.max_connections as usize,
            max_per_peer: args.connections_per_peer(),
            head_timeout: Duration::from_secs_f64(args.head_timeout),
        },
    )
    .await;
    close_all(&state, building, backend).await;
    tracing::info!("shut down");
    let failed = startup_error.lock().take();
    match failed {
        Some(e) => {
            // The failure reached the callbacks' task with the same change that stopped the
            // server; let it queue the `failed` notice before this runtime ends.
            if let Some(task) = reporting {
                let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
            }
            Err(e)
        }
        None => Ok(()),
    }
}

/// What every handler shares, with the metrics recorder installed.
fn app_state(
    args: &ServeArgs,
    path: &std::path::Path,
    ctx: usize,
    progress: &Arc<Progress>,
    stop: watch::Receiver<bool>,
    bound: SocketAddr,
) -> Arc<AppState> {
    let info = ModelInfo {
        id: args.model_name.clone().unwrap_or_else(|| model_id(path)),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        ctx,
    };
    let body_timeout = Duration::from_secs_f64(args.body_timeout);
    let access = AccessPolicy {
        api_key: args.api_key(),
        hosts: AllowedHosts::new(&args.allowed_hosts, bound),
        origins: Origins::new(&args.cors_allow_origin),
    };
    tracing::info!("access: {access}");
    let state = Arc::new(AppState::new(
        progress.clone(),
        stop,
        body_timeout,
        info,
        access,
    ));
    match crate::metrics::install() {
        Ok(h) => {
            let _ = state.metrics.set(h);
        }
        Err(e) => tracing::warn!("/metrics disabled: {e}"),
    }
    state
}

/// After the listener closed: no thread may be inside the device driver when the process exits.
/// A runtime still being built (the tokenizer, the engine's start) finishes first, so an engine
/// thread cannot start inside the driver meanwhile; then the loader and the kernel preload stop,
/// and the engine thread ends and releases its sequences.
async fn close_all(
    state: &AppState,
    building: tokio::task::JoinHandle<()>,
    backend: Arc<dyn Backend>,
) {
    if tokio::time::timeout(ENGINE_CLOSE_WAIT, building)
        .await
        .is_err()
    {
        tracing::warn!("the runtime was still starting after {ENGINE_CLOSE_WAIT:?}");
    }
    let engine = state.runtime.get().map(|rt| rt.engine.clone());
    let _ = tokio::task::spawn_blocking(move || {
        backend.shutdown();
        if let Some(engine) = engine {
            if !engine.close(ENGINE_CLOSE_WAIT) {
                tracing::warn!(
                    "the engine did not end within {ENGINE_CLOSE_WAIT:?}; exiting anyway"
                );
            }
        }
    })
    .await;
}

/// The model's default id: its file name without the `.gguf` extension.
fn model_id(path: &std::path::Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    name.strip_suffix(".gguf").unwrap_or(&name).to_string()
}

/// Pick the backend for `--device` and start its loader thread.
fn start_backend(
    args: &ServeArgs,
    file: &Arc<GgufFile>,
    spec: &ModelSpec,
    plan: LoadPlan,
    progress: &Arc<Progress>,
    ctx: usize,
) -> Result<Arc<dyn Backend>, String> {
    let options = LoaderOptions {
        bandwidth_limit_mb_s: args.load_bandwidth_limit,
        fail_unit: None,
        yield_to_startup: None,
    }
    .with_env_fault();
    let use_cuda = match backend::choose_device(args.device, args.gpu_device)? {
        DeviceChoice::Cuda(name) => {
            tracing::info!("using GPU {}: {name}", args.gpu_device);
            true
        }
        DeviceChoice::Cpu(Some(why)) => {
            tracing::info!("CUDA unavailable ({why}); using the CPU backend");
            false
        }
        DeviceChoice::Cpu(None) => false,
    };
    if use_cuda {
        return cuda::start(cuda::CudaStart {
            file: file.clone(),
            spec: spec.clone(),
            plan,
            progress: progress.clone(),
            options,
            ordinal: args.gpu_device,
            ctx,
        });
    }
    let model = Arc::new(CpuModel::empty(spec));
    let job = LoadJob {
        file: file.clone(),
        spec: spec.clone(),
        plan,
        model: model.clone(),
        progress: progress.clone(),
        // On a machine with few cores the bulk copy would slow the tokenizer build, the last
        // step before READY.
        options: LoaderOptions {
            yield_to_startup: Some(Duration::from_secs(2)),
            ..options
        },
    };
    loader::spawn(job).map_err(|e| format!("cannot start the loader thread: {e}"))?;
    Ok(model)
}

/// The tokenizer and chat template from the file's metadata.
fn build_tokenizer(file: &GgufFile) -> Result<(Tokenizer, ChatTemplate), String> {
    let meta = file.metadata();
    let tok = Tokenizer::from_metadata(meta).map_err(|e| format!("tokenizer: {e}"))?;
    let tmpl = ChatTemplate::from_metadata(meta).map_err(|e| format!("chat template: {e}"))?;
    Ok((tok, tmpl))
}

/// The engine's settings from the command line.
struct EngineOptions {
    batch: BatchRequest,
    max_queue: usize,
    request_timeout: Option<Duration>,
    /// `--max-answer-bytes`.
    max_answer_bytes: usize,
}

/// Wait for the tokenizer (built on its own thread since startup), then start the engine.
async fn build_runtime(
    state: &Arc<AppState>,
    tokenizer: TokenizerThread,
    model: Arc<dyn Backend>,
    ctx: usize,
    opts: EngineOptions,
) -> Result<(), String> {
    let built = tokio::task::spawn_blocking(move || tokenizer.join())
        .await
        .map_err(|e| format!("tokenizer task failed: {e}"))?
        .map_err(|_| "the tokenizer thread panicked".to_string())?;
    let (tok, tmpl) = built?;
    if tok.vocab_size() > model.hp().vocab {
        return Err(format!(
            "the tokenizer has {} tokens but token_embd.weight only {} rows",
            tok.vocab_size(),
            model.hp().vocab
        ));
    }
    if *state.stopping.borrow() {
        return Ok(()); // shutting down: no engine to start
    }
    let tokenizer = Arc::new(tok);
    let cfg = EngineConfig {
        model,
        tokenizer: tokenizer.clone(),
        max_queue: opts.max_queue,
        batch: opts.batch,
        request_timeout: opts.request_timeout,
        outcomes: state.outcomes.clone(),
    };
    let engine = tokio::task::spawn_blocking(move || engine::spawn(cfg))
        .await
        .map_err(|e| format!("engine start failed: {e}"))??;
    let answer_cap = AnswerCap {
        bounds: AnswerBounds::of(&tokenizer),
        max_bytes: opts.max_answer_bytes,
    };
    let runtime = Runtime {
        answer_cap,
        tokenizer,
        template: Arc::new(tmpl),
        engine: engine.clone(),
        limits: Limits { ctx_size: ctx },
    };
    let _ = state.runtime.set(runtime);
    state.progress.tokenizer_built();
    Ok(())
}

/// The `uri` the callbacks report: the configured one, else the bound address (with a warning
/// when that is a wildcard address nobody can connect to).
fn advertised_uri(configured: Option<&str>, local: SocketAddr) -> String {
    if let Some(u) = configured {
        return u.to_string();
    }
    if local.ip().is_unspecified() {
        tracing::warn!("bound to {local}: the load callbacks will report it as is; set --advertise-url to the address callers use");
    }
    format!("http://{local}")
}

/// The tasks that follow the load: the READY log line, the terminal's bar, the callbacks (whose
/// task is returned).
fn follow_load(
    args: &ServeArgs,
    local: SocketAddr,
    progress: &Arc<Progress>,
    model: &Arc<dyn Backend>,
    callbacks: Option<Callbacks>,
) -> Option<tokio::task::JoinHandle<()>> {
    tokio::spawn(announce_ready(progress.clone()));
    if let Some(bar) = LoadBar::on_terminal(progress) {
        tokio::spawn(bar.follow(progress.clone()));
    }
    let callbacks = callbacks?;
    let worker = Worker {
        worker_id: args.worker_id.clone(),
        uri: advertised_uri(args.advertise_url.as_deref(), local),
    };
    let (progress, model) = (progress.clone(), model.clone());
    Some(tokio::spawn(callback::follow_load(
        progress, model, callbacks, worker,
    )))
}

/// Log READY.
async fn announce_ready(progress: Arc<Progress>) {
    let mut changes = progress.subscribe();
    loop {
        match progress.state() {
            LoadState::Ready | LoadState::Resident => break,
            LoadState::Failed => return,
            LoadState::Loading => {}
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
    let snap = progress.snapshot();
    tracing::info!(
        "ready in {:.0} ms: embeddings + layer 0 resident ({}/{} units)",
        snap.ready_ms.unwrap_or(0.0),
        snap.units_resident,
        snap.units_total
    );
}

/// SIGINT and SIGTERM handlers, installed before the listener is announced so that a signal
/// arriving at any point after `listening on` is an orderly shutdown.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, String> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let int = signal(SignalKind::interrupt())
                .map_err(|e| format!("cannot handle SIGINT: {e}"))?;
            let term = signal(SignalKind::terminate())
                .map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
            Ok(Signals { int, term })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }
}

/// Flip `stop` on the first SIGINT/SIGTERM (an orderly drain); a second one exits at once with
/// status 130, abandoning the drain.
#[allow(unused_mut)]
async fn watch_signals(mut signals: Signals, stop: watch::Sender<bool>) {
    signals.next().await;
    let _ = stop.send(true);
    signals.next().await;
    tracing::error!("second signal during shutdown: exiting now without finishing the drain");
    eprintln!("second signal: exiting now");
    std::process::exit(130);
}

impl Signals {
    /// The next SIGINT or SIGTERM.
    #[allow(unused_mut)]
    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.int.recv() => {},
            _ = self.term.recv() => {},
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Once the load has failed: record the failure as the exit status and start the drain.
async fn exit_on_failure(
    progress: Arc<Progress>,
    failure: Arc<parking_lot::Mutex<Option<String>>>,
    stop: watch::Sender<bool>,
) {
    let mut changes = progress.subscribe();
    while progress.state() != LoadState::Failed {
        if changes.changed().await.is_err() {
            return;
        }
    }
    let e = progress.snapshot().error.unwrap_or_default();
    tracing::error!(
        "the load failed ({e}); draining, then exiting with status 1 (--exit-on-load-failure)"
    );
    failure
        .lock()
        .get_or_insert(format!("model loading failed: {e}"));
    let _ = stop.send(true);
}

/// Resolves once `stop` is set.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// On stop: refuse new work, let running requests go on until the deadline, then end the ones
/// still waiting for a layer.
async fn drain_on_stop(state: Arc<AppState>, model: Arc<dyn Backend>, stop: watch::Receiver<bool>) {
    stopped(stop).await;
    tracing::info!("shutdown requested: refusing new requests, draining for up to {DRAIN:?}");
    if let Some(rt) = state.runtime.get() {
        rt.engine.drain.start(Instant::now() + DRAIN);
    }
    tokio::time::sleep(DRAIN).await;
    model.interrupt();
}
