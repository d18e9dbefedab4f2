package agentlm

// #include <stdlib.h>
// #include "agentlm.h"
// extern void *agentlm_go_handle(uintptr_t h);
// extern agentlm_train_progress_fn agentlm_go_progress_fn(void);
import "C"

import (
	"context"
	"fmt"
	"runtime"
	"runtime/cgo"
	"time"
)

// Adapter is a LoRA adapter loaded for a model (Hugging Face PEFT files). Immutable, safe for
// concurrent use; sessions and agents it is attached to keep it alive after Close.
type Adapter struct {
	h handle[*C.agentlm_adapter]
}

func newAdapter(p *C.agentlm_adapter) *Adapter {
	a := &Adapter{h: handle[*C.agentlm_adapter]{ptr: p, free: func(p *C.agentlm_adapter) { C.agentlm_adapter_free(p) }}}
	runtime.SetFinalizer(a, (*Adapter).Close)
	return a
}

// LoadAdapter reads a PEFT adapter directory for m.
func (m *Model) LoadAdapter(dir string) (*Adapter, error) {
	var out *C.agentlm_adapter
	err := m.use(func(p *C.agentlm_model) error {
		d, n := cstr(dir)
		var cerr *C.agentlm_error
		st := C.agentlm_adapter_load(p, d, n, &out, &cerr)
		runtime.KeepAlive(dir)
		return check("LoadAdapter", st, cerr)
	})
	if err != nil {
		return nil, err
	}
	return newAdapter(out), nil
}

// Close releases the handle. Safe to call more than once.
func (a *Adapter) Close() error {
	a.h.close()
	runtime.SetFinalizer(a, nil)
	return nil
}

// use runs f with the handle; a nil *Adapter passes NULL (detach).
func (a *Adapter) use(f func(p *C.agentlm_adapter) error) error {
	if a == nil {
		return f(nil)
	}
	return a.h.use(f)
}

// Rank is the adapter's LoRA rank.
func (a *Adapter) Rank() int {
	r := 0
	_ = a.use(func(p *C.agentlm_adapter) error { r = int(C.agentlm_adapter_rank(p)); return nil })
	return r
}

// Save writes the adapter as a PEFT directory (each file replaced atomically).
func (a *Adapter) Save(dir string) error {
	return a.use(func(p *C.agentlm_adapter) error {
		d, n := cstr(dir)
		var cerr *C.agentlm_error
		st := C.agentlm_adapter_save(p, d, n, &cerr)
		runtime.KeepAlive(dir)
		return check("Save", st, cerr)
	})
}

// DataKind says which data set a record joins.
type DataKind int32

// Data kinds.
const (
	DataAgent   DataKind = 0 // agent trajectories, drawn with probability AgentRatio
	DataGeneral DataKind = 1 // general chat
	DataEval    DataKind = 2 // held-out, for Evaluate
)

// TrainerParams configure a trainer; start from DefaultTrainerParams.
type TrainerParams struct {
	LoraRank              int
	LoraAlpha             float32
	LoraDropout           float32
	TargetModules         uint32 // AGENTLM_LORA_* bits
	LearningRate          float32
	WarmupSteps           int
	TotalSteps            int
	MinLRRatio            float32
	WeightDecay           float32
	MaxGradNorm           float32
	GradAccum             int
	MaxTokens             int
	AgentRatio            float32
	RewardThreshold       float64
	Seed                  uint64
	GradientCheckpointing bool
}

// DefaultTrainerParams: r 8, alpha 16 on every linear, AdamW 2e-4, clip 1, η 0.2, reward ≥ 1, 1024 tokens.
func DefaultTrainerParams() TrainerParams {
	d := C.agentlm_trainer_params_default()
	return TrainerParams{
		LoraRank: int(d.lora_rank), LoraAlpha: float32(d.lora_alpha), LoraDropout: float32(d.lora_dropout),
		TargetModules: uint32(d.target_modules), LearningRate: float32(d.learning_rate), WarmupSteps: int(d.warmup_steps),
		TotalSteps: int(d.total_steps), MinLRRatio: float32(d.min_lr_ratio), WeightDecay: float32(d.weight_decay),
		MaxGradNorm: float32(d.max_grad_norm), GradAccum: int(d.grad_accum), MaxTokens: int(d.max_tokens),
		AgentRatio: float32(d.agent_ratio), RewardThreshold: float64(d.reward_threshold), Seed: uint64(d.seed),
		GradientCheckpointing: bool(d.gradient_checkpointing),
	}
}

// Progress is one optimizer step's figures.
type Progress struct {
	Step            uint64
	Loss            float64
	LearningRate    float32
	GradNorm        float64
	Tokens          int
	LossTokens      int
	TokensPerSecond float64
	// Tokens per second over this Run call so far.
	MeanTokensPerSecond float64
	// Time since this Run call began, and the estimated time until it ends.
	Elapsed, ETA time.Duration
	// Peak resident memory of the process so far, in bytes (0 where unknown).
	PeakRSS uint64
}

type progressSink struct {
	fn    func(Progress) bool
	panic any
}

// Trainer fine-tunes a LoRA adapter on agent trajectories. One goroutine at a time; Cancel from any.
type Trainer struct {
	h handle[*C.agentlm_trainer]
}

func newTrainer(p *C.agentlm_trainer) *Trainer {
	t := &Trainer{h: handle[*C.agentlm_trainer]{ptr: p, free: func(p *C.agentlm_trainer) { C.agentlm_trainer_free(p) }}}
	runtime.SetFinalizer(t, (*Trainer).Close)
	return t
}

// NewTrainer makes a trainer on m with a fresh adapter, or continuing from start (may be nil).
func (m *Model) NewTrainer(params TrainerParams, start *Adapter) (*Trainer, error) {
	var out *C.agentlm_trainer
	err := m.use(func(p *C.agentlm_model) error {
		return start.use(func(sp *C.agentlm_adapter) error {
			cp := C.agentlm_trainer_params_default()
			cp.lora_rank = C.uint32_t(params.LoraRank)
			cp.lora_alpha = C.float(params.LoraAlpha)
			cp.lora_dropout = C.float(params.LoraDropout)
			cp.target_modules = C.uint32_t(params.TargetModules)
			cp.learning_rate = C.float(params.LearningRate)
			cp.warmup_steps = C.uint32_t(params.WarmupSteps)
			cp.total_steps = C.uint32_t(params.TotalSteps)
			cp.min_lr_ratio = C.float(params.MinLRRatio)
			cp.weight_decay = C.float(params.WeightDecay)
			cp.max_grad_norm = C.float(params.MaxGradNorm)
			cp.grad_accum = C.uint32_t(params.GradAccum)
			cp.max_tokens = C.uint32_t(params.MaxTokens)
			cp.agent_ratio = C.float(params.AgentRatio)
			cp.reward_threshold = C.double(params.RewardThreshold)
			cp.seed = C.uint64_t(params.Seed)
			cp.gradient_checkpointing = C.bool(params.GradientCheckpointing)
			var cerr *C.agentlm_error
			return check("NewTrainer", C.agentlm_trainer_new(p, &cp, sp, &out, &cerr), cerr)
		})
	})
	if err != nil {
		return nil, err
	}
	return newTrainer(out), nil
}

// ResumeTrainer continues from a checkpoint directory on m.
func (m *Model) ResumeTrainer(dir string) (*Trainer, error) {
	var out *C.agentlm_trainer
	err := m.use(func(p *C.agentlm_model) error {
		d, n := cstr(dir)
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_resume(p, d, n, &out, &cerr)
		runtime.KeepAlive(dir)
		return check("ResumeTrainer", st, cerr)
	})
	if err != nil {
		return nil, err
	}
	return newTrainer(out), nil
}

// Close frees the trainer. Safe to call more than once.
func (t *Trainer) Close() error {
	t.h.close()
	runtime.SetFinalizer(t, nil)
	return nil
}

func (t *Trainer) use(f func(p *C.agentlm_trainer) error) error {
	return t.h.use(f)
}

// AddJSON adds one record (AgentInstruct, ShareGPT or Agent-FLAN schema). It returns false when the
// record's reward is below the threshold (nothing added).
func (t *Trainer) AddJSON(kind DataKind, record string) (bool, error) {
	var added C.bool
	err := t.use(func(p *C.agentlm_trainer) error {
		r, n := cstr(record)
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_add_json(p, C.int32_t(kind), r, n, &added, &cerr)
		runtime.KeepAlive(record)
		return check("AddJSON", st, cerr)
	})
	return bool(added), err
}

// AddJSONLFile adds every record of a JSONL file (streamed; the file must not change afterwards).
func (t *Trainer) AddJSONLFile(kind DataKind, path string) (int, error) {
	var added C.size_t
	err := t.use(func(p *C.agentlm_trainer) error {
		s, n := cstr(path)
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_add_jsonl_file(p, C.int32_t(kind), s, n, &added, &cerr)
		runtime.KeepAlive(path)
		return check("AddJSONLFile", st, cerr)
	})
	return int(added), err
}

// AddEpisode adds the episode a recorded (with the reward given by SetOutcome); false when its reward
// is missing or below the threshold.
func (t *Trainer) AddEpisode(a *Agent) (bool, error) {
	var added C.bool
	err := t.use(func(p *C.agentlm_trainer) error {
		return a.use(func(ap *C.agentlm_agent) error {
			var cerr *C.agentlm_error
			return check("AddEpisode", C.agentlm_trainer_add_episode(p, ap, &added, &cerr), cerr)
		})
	})
	return bool(added), err
}

// Run trains up to steps optimizer steps or until budget has passed (0: no limit), calling onStep
// (may be nil) after each; returning false from it stops the run. When ctx is done the run stops at
// the next example (the interrupted step is discarded) and ctx.Err() is returned. It returns the last
// step's figures.
func (t *Trainer) Run(ctx context.Context, steps int, budget time.Duration, onStep func(Progress) bool) (Progress, error) {
	var last C.agentlm_train_progress
	err := t.use(func(p *C.agentlm_trainer) error {
		sink := &progressSink{fn: onStep}
		h := cgo.NewHandle(sink)
		defer h.Delete()
		stop := watch(ctx, func() { C.agentlm_trainer_cancel(p) })
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_run(p, C.uint32_t(steps), C.double(budget.Seconds()), C.agentlm_go_progress_fn(),
			C.agentlm_go_handle(C.uintptr_t(h)), &last, &cerr)
		stop()
		if err := check("Run", st, cerr); err != nil {
			return err
		}
		if sink.panic != nil {
			return fmt.Errorf("agentlm: Run: progress callback panicked: %v", sink.panic)
		}
		if st == C.AGENTLM_STATUS_CANCELLED && ctx.Err() != nil {
			return ctx.Err()
		}
		return nil
	})
	return progressOf(&last), err
}

// Cancel stops a running Run or Evaluate at the next example. Any goroutine.
func (t *Trainer) Cancel() {
	_ = t.use(func(p *C.agentlm_trainer) error { C.agentlm_trainer_cancel(p); return nil })
}

// Step is the number of optimizer steps taken.
func (t *Trainer) Step() uint64 {
	var s uint64
	_ = t.use(func(p *C.agentlm_trainer) error { s = uint64(C.agentlm_trainer_step(p)); return nil })
	return s
}

// Evaluate is the token-weighted masked loss over the held-out records, and the loss tokens counted.
func (t *Trainer) Evaluate() (float64, int, error) {
	var loss C.double
	var tokens C.uint32_t
	err := t.use(func(p *C.agentlm_trainer) error {
		var cerr *C.agentlm_error
		return check("Evaluate", C.agentlm_trainer_evaluate(p, &loss, &tokens, &cerr), cerr)
	})
	return float64(loss), int(tokens), err
}

// Adapter snapshots the adapter trained so far, for sessions and agents.
func (t *Trainer) Adapter() (*Adapter, error) {
	var out *C.agentlm_adapter
	err := t.use(func(p *C.agentlm_trainer) error {
		var cerr *C.agentlm_error
		return check("Adapter", C.agentlm_trainer_adapter(p, &out, &cerr), cerr)
	})
	if err != nil {
		return nil, err
	}
	return newAdapter(out), nil
}

// SaveAdapter writes the trained adapter as a PEFT directory.
func (t *Trainer) SaveAdapter(dir string) error {
	return t.use(func(p *C.agentlm_trainer) error {
		d, n := cstr(dir)
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_save_adapter(p, d, n, &cerr)
		runtime.KeepAlive(dir)
		return check("SaveAdapter", st, cerr)
	})
}

// Checkpoint saves everything ResumeTrainer needs to continue exactly.
func (t *Trainer) Checkpoint(dir string) error {
	return t.use(func(p *C.agentlm_trainer) error {
		d, n := cstr(dir)
		var cerr *C.agentlm_error
		st := C.agentlm_trainer_checkpoint(p, d, n, &cerr)
		runtime.KeepAlive(dir)
		return check("Checkpoint", st, cerr)
	})
}
