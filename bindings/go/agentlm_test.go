package agentlm

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// modelPath is the real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch-model.sh puts it in the cache).
func modelPath(t *testing.T) string {
	t.Helper()
	p := os.Getenv("AGENTLM_MODEL")
	if p == "" {
		cache := os.Getenv("AGENTLM_CACHE")
		if cache == "" {
			home, _ := os.UserHomeDir()
			cache = filepath.Join(home, ".cache", "agentlm")
		}
		p = filepath.Join(cache, "SmolLM2-135M-Instruct.Q4_1.gguf")
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test model not found at %s: run scripts/fetch-model.sh", p)
	}
	return p
}

var (
	sharedOnce  sync.Once
	sharedModel *Model
	sharedErr   error
)

func model(t *testing.T) *Model {
	t.Helper()
	sharedOnce.Do(func() { sharedModel, sharedErr = LoadModel(modelPath(t), nil) })
	if sharedErr != nil {
		t.Fatal(sharedErr)
	}
	return sharedModel
}

const story = "Once upon a time, in a small village nestled between two mountains, there lived a"

func greedy(t *testing.T, m *Model, n int) Generation {
	t.Helper()
	s, err := m.NewSession(0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.AppendText(story); err != nil {
		t.Fatal(err)
	}
	p := DefaultGenerateParams()
	p.MaxTokens, p.Temperature, p.IgnoreEOS = n, 0, true
	g, err := s.Generate(context.Background(), p, nil)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func TestVersionsMatchTheHeader(t *testing.T) {
	if ABIVersion() != headerABIVersion || Version() == "" {
		t.Fatalf("library ABI %d, header %d, version %q", ABIVersion(), headerABIVersion, Version())
	}
}

func TestGenerationMatchesTransformersGreedy(t *testing.T) {
	m := model(t)
	g := greedy(t, m, 12)
	// transformers' greedy continuation of this prompt on the same model.
	if want := " wise and kind woman named Elara. She was a skilled"; g.Text != want {
		t.Fatalf("got %q, want %q", g.Text, want)
	}
	if len(g.Tokens) != 12 || g.Tokens[0] != 9357 {
		t.Fatalf("tokens %v", g.Tokens)
	}
	ids, err := m.Tokenize(story, false, false)
	if err != nil || len(ids) != 17 || ids[0] != 6403 {
		t.Fatalf("tokenize: %v %v", ids, err)
	}
	chat, err := m.ApplyChatTemplate([]Message{{"user", "What is the capital of France?"}})
	if err != nil || !strings.HasSuffix(chat, "<|im_start|>assistant\n") {
		t.Fatalf("chat template: %q %v", chat, err)
	}
}

func TestStreamingCallbackCanStopAndPanicsAreErrors(t *testing.T) {
	m := model(t)
	s, err := m.NewSession(0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_ = s.AppendText(story)
	p := DefaultGenerateParams()
	p.MaxTokens, p.IgnoreEOS = 20, true
	var pieces []string
	g, err := s.Generate(context.Background(), p, func(text string) bool {
		pieces = append(pieces, text)
		return len(pieces) < 3
	})
	if err != nil || len(g.Tokens) != 3 || strings.Join(pieces, "") != g.Text {
		t.Fatalf("stop after 3: %v %v %q", err, g.Tokens, pieces)
	}
	_, err = s.Generate(context.Background(), p, func(string) bool { panic("boom") })
	if err == nil || !strings.Contains(err.Error(), "boom") {
		t.Fatalf("panic: %v", err)
	}
}

func TestConcurrentSessionsAgree(t *testing.T) {
	m := model(t)
	want := greedy(t, m, 8).Text
	var wg sync.WaitGroup
	got := make([]string, 4)
	for i := range got {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i] = greedy(t, m, 8).Text
		}(i)
	}
	wg.Wait()
	for i, g := range got {
		if g != want {
			t.Fatalf("session %d: %q, want %q", i, g, want)
		}
	}
}

func TestContextCancellationStopsGeneration(t *testing.T) {
	m := model(t)
	s, _ := m.NewSession(0)
	defer s.Close()
	_ = s.AppendText(story)
	ctx, cancel := context.WithCancel(context.Background())
	p := DefaultGenerateParams()
	p.MaxTokens, p.IgnoreEOS = 200, true
	n := 0
	g, err := s.Generate(ctx, p, func(string) bool {
		n++
		if n == 2 {
			cancel()
		}
		return true
	})
	if !errors.Is(err, context.Canceled) || len(g.Tokens) > 10 {
		t.Fatalf("err %v after %d tokens", err, len(g.Tokens))
	}
	// The session is still usable.
	p.MaxTokens = 2
	if _, err := s.Generate(context.Background(), p, nil); err != nil {
		t.Fatal(err)
	}
}

func TestErrorsCarryStatusAndMessage(t *testing.T) {
	_, err := LoadModel("/nonexistent/model.gguf", nil)
	var e *Error
	if !errors.As(err, &e) || e.Status != StatusIO || !strings.Contains(e.Message, "nonexistent") {
		t.Fatalf("%#v", err)
	}
	m := model(t)
	s, _ := m.NewSession(0)
	s.Close()
	if err := s.AppendText("x"); !errors.Is(err, ErrClosed) {
		t.Fatalf("closed: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal("second Close")
	}
}

func TestReActEpisodeWithAGoTool(t *testing.T) {
	m := model(t)
	p := DefaultAgentParams()
	p.Constrained, p.MaxSteps, p.MaxTokensPerStep = true, 2, 32
	a, err := m.NewAgent(p, `Solve the task. Reply "ACTION: your next action".`, "Your task is to: go to the table 1.")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	calls := 0
	if err := a.AddTool("go to", "go to a place", "", func(input string) (string, error) {
		calls++
		return "You arrive at " + strings.TrimSpace(input) + ".", nil
	}); err != nil {
		t.Fatal(err)
	}
	for !a.Finished() {
		r, err := a.Step(context.Background(), 0, 0)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == StepAction {
			if r.Tool == "go to" && !strings.HasPrefix(r.Observation, "You arrive at ") {
				t.Fatalf("observation %q", r.Observation)
			}
		}
	}
	if calls == 0 {
		t.Fatal("the Go tool never ran")
	}
	if err := a.SetOutcome(1, "success"); err != nil {
		t.Fatal(err)
	}
	js, err := a.TrajectoryJSON()
	if err != nil || !strings.Contains(js, `"reward":1`) || !strings.Contains(js, `"from":"gpt"`) {
		t.Fatalf("trajectory %s %v", js, err)
	}
}

func TestAdmissibleActionsAreTheOnlyActions(t *testing.T) {
	m := model(t)
	p := DefaultAgentParams()
	p.MaxSteps, p.MaxTokensPerStep = 2, 8
	a, err := m.NewAgent(p, `Solve the task. Reply "ACTION: your next action".`, "Your task is to: go to the table 1.")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.SetAdmissible([]string{"go to table 1", "go to shelf 2"}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Step(context.Background(), 0, 0)
	if err != nil || r.Kind != StepAction || (r.Action != "go to table 1" && r.Action != "go to shelf 2") || r.Accepted != -1 {
		t.Fatalf("step %+v %v", r, err)
	}
	if err := a.SubmitResult("You arrive at the table 1.", true); err != nil {
		t.Fatal(err)
	}
	if err := a.SetAdmissible([]string{""}); err == nil {
		t.Fatal("an empty admissible action was accepted")
	}
}

func TestToolValuesNarrowConstrainedInputs(t *testing.T) {
	m := model(t)
	p := DefaultAgentParams()
	p.MaxSteps, p.MaxTokensPerStep, p.Constrained = 2, 8, true
	a, err := m.NewAgent(p, `Solve the task. Reply "ACTION: your next action".`, "Your task is to: find the key.")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.AddTool("go to", "go somewhere", "", nil); err != nil {
		t.Fatal(err)
	}
	if err := a.SetToolValues("go to", "", []string{"drawer 7", "shelf 9"}); err != nil {
		t.Fatal(err)
	}
	r, err := a.Step(context.Background(), 0, 0)
	if err != nil || r.Kind != StepAction || (r.Action != "go to drawer 7" && r.Action != "go to shelf 9") {
		t.Fatalf("step %+v %v", r, err)
	}
	if err := a.SetToolValues("fly", "", []string{"x"}); err == nil {
		t.Fatal("values for an unregistered tool were accepted")
	}
}

func TestTrainingStepAndAdapterHotSwap(t *testing.T) {
	m := model(t)
	p := DefaultTrainerParams()
	p.LoraRank, p.LoraAlpha, p.LearningRate, p.MaxTokens = 4, 8, 2e-3, 96
	tr, err := m.NewTrainer(p, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rec := `{"conversations":[{"from":"human","value":"You are in room 1. Go to the door.","loss":null},` +
		`{"from":"gpt","value":"THOUGHT: the door is north.\nACTION: go to door 1","loss":true}],"reward":1}`
	for _, k := range []DataKind{DataAgent, DataEval} {
		if ok, err := tr.AddJSON(k, rec); err != nil || !ok {
			t.Fatalf("add: %v %v", ok, err)
		}
	}
	if _, err := tr.AddJSON(DataAgent, "{"); !IsStatus(err, StatusInvalidArgument) {
		t.Fatalf("bad JSON: %v", err)
	}
	before, _, err := tr.Evaluate()
	if err != nil {
		t.Fatal(err)
	}
	steps := 0
	last, err := tr.Run(context.Background(), 3, 0, func(p Progress) bool {
		steps++
		return p.Loss > 0 && p.TokensPerSecond > 0 && p.MeanTokensPerSecond > 0 && p.Elapsed > 0 && p.PeakRSS > 0
	})
	if err != nil || steps != 3 || last.Step != 3 || tr.Step() != 3 {
		t.Fatalf("run: %v steps %d last %+v", err, steps, last)
	}
	after, _, _ := tr.Evaluate()
	if after >= before {
		t.Fatalf("held-out loss %f -> %f", before, after)
	}
	// Cancellation through the context.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tr.Run(ctx, 5, time.Minute, nil); !errors.Is(err, context.Canceled) || tr.Step() != 3 {
		t.Fatalf("cancelled run: %v, step %d", err, tr.Step())
	}
	ad, err := tr.Adapter()
	if err != nil || ad.Rank() != 4 {
		t.Fatalf("adapter: %v", err)
	}
	defer ad.Close()
	s, _ := m.NewSession(0)
	defer s.Close()
	if err := s.SetAdapter(ad, 1); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAdapter(nil, 1); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := ad.Save(dir); err != nil {
		t.Fatal(err)
	}
	again, err := m.LoadAdapter(dir)
	if err != nil || again.Rank() != 4 {
		t.Fatalf("reload: %v", err)
	}
	again.Close()
}

func TestPanickingAndFailingToolsBecomeToolErrors(t *testing.T) {
	m := model(t)
	p := DefaultAgentParams()
	p.Constrained, p.MaxSteps, p.MaxTokensPerStep = true, 2, 24
	for _, c := range []struct {
		fn   ToolFunc
		want string
	}{
		{func(string) (string, error) { panic("lamp broke") }, "Tool error: the tool panicked: lamp broke"},
		{func(string) (string, error) { return "", errors.New("no power") }, "Tool error: no power"},
	} {
		a, err := m.NewAgent(p, `Reply "ACTION: look".`, "Your task is to: look around.")
		if err != nil {
			t.Fatal(err)
		}
		// The only tool: constrained decoding must call it.
		if err := a.AddTool("look", "look around", "", c.fn); err != nil {
			t.Fatal(err)
		}
		r, err := a.Step(context.Background(), 0, 0)
		if err != nil || r.Kind != StepAction || r.Observation != c.want {
			t.Fatalf("%v %+v", err, r)
		}
		a.Close()
	}
}
