// A ReAct agent driven from Go: the household is Go code, its actions are Go tools, and before every
// reply the host hands the agent the admissible actions (Agent.SetAdmissible); the agent steps on the
// real model. The last line says whether the task was done and how many actions the household
// accepted. Ctrl-C cancels the reply being generated.
//
//	go run . [-steps N] [-adapter DIR] MODEL.gguf
//
// -adapter applies a LoRA adapter (PEFT directory), e.g. one saved by examples/c/train_agent --out DIR.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"

	"libagentlm.dev/agentlm"
)

type house struct {
	at       string
	places   map[string][]string
	holding  string
	accepted int // actions the household accepted (did something)
}

// admissible lists the actions possible now.
func (h *house) admissible() []string {
	var out []string
	for _, p := range []string{"countertop 1", "table 1", "cabinet 1"} {
		if p != h.at {
			out = append(out, "go to "+p)
		}
	}
	if h.holding == "" {
		for _, thing := range h.places[h.at] {
			out = append(out, "take "+thing+" from "+h.at)
		}
	}
	return out
}

func (h *house) goTo(input string) (string, error) {
	place := strings.TrimPrefix(strings.TrimSpace(input), "the ")
	things, ok := h.places[place]
	if !ok {
		return "Nothing happened.", nil
	}
	h.at = place
	h.accepted++
	if len(things) == 0 {
		return fmt.Sprintf("On the %s, you see nothing.", place), nil
	}
	return fmt.Sprintf("On the %s, you see a %s.", place, strings.Join(things, ", a ")), nil
}

func (h *house) take(input string) (string, error) {
	object, from, ok := strings.Cut(strings.TrimSpace(input), " from ")
	if !ok || strings.TrimPrefix(from, "the ") != h.at || h.holding != "" {
		return "Nothing happened.", nil
	}
	for i, thing := range h.places[h.at] {
		if thing == strings.TrimPrefix(object, "the ") {
			h.places[h.at] = append(h.places[h.at][:i], h.places[h.at][i+1:]...)
			h.holding = thing
			h.accepted++
			return fmt.Sprintf("You pick up the %s from the %s.", thing, h.at), nil
		}
	}
	return "Nothing happened.", nil
}

func main() {
	steps := flag.Int("steps", 6, "most replies")
	adapterDir := flag.String("adapter", "", "LoRA adapter directory (PEFT format) to apply")
	flag.Parse()
	if flag.NArg() < 1 {
		fmt.Fprintln(os.Stderr, "usage: go run . [-steps N] [-adapter DIR] MODEL.gguf")
		os.Exit(2)
	}
	model, err := agentlm.LoadModel(flag.Arg(0), nil)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer model.Close()

	h := &house{at: "middle of the room", places: map[string][]string{
		"countertop 1": {"apple 1", "mug 1"}, "table 1": {"book 1"}, "cabinet 1": {},
	}}
	params := agentlm.DefaultAgentParams()
	params.MaxSteps, params.MaxTokensPerStep = *steps, 48
	agent, err := model.NewAgent(params,
		`Interact with a household to solve a task. Each turn, output "THOUGHT: your thoughts.\n ACTION: your next action".`,
		"You are in the middle of a room. Looking quickly around you, you see a countertop 1, a table 1 and a cabinet 1.\n"+
			"Your task is to: find an apple and take it.")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	defer agent.Close()
	must(agent.AddTool("go to", "go to a place, e.g. go to table 1", "", h.goTo))
	if *adapterDir != "" {
		adapter, err := model.LoadAdapter(*adapterDir)
		must(err)
		defer adapter.Close()
		must(agent.SetAdapter(adapter, 1))
	}
	must(agent.AddTool("take", "take an object from the place you are at, e.g. take book 1 from table 1", "", h.take))

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	actions, replies := 0, 0
	for !agent.Finished() && h.holding != "apple 1" {
		must(agent.SetAdmissible(h.admissible()))
		r, err := agent.Step(ctx, 0, 0)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		switch r.Kind {
		case agentlm.StepAction:
			replies++
			actions++
			if r.Thought != "" {
				fmt.Println("Thought:", r.Thought)
			}
			fmt.Printf("Action: %s %s\nObservation: %s\n", r.Tool, r.Input, r.Observation)
		case agentlm.StepInvalid, agentlm.StepFinal:
			replies++
			fmt.Println("Reply:", r.Text)
		}
	}
	outcome, reward := "unsolved", 0.0
	if h.holding == "apple 1" {
		outcome, reward = "success", 1.0
	}
	must(agent.SetOutcome(reward, outcome))
	if outcome == "success" {
		fmt.Printf("task completed in %d steps", replies)
	} else {
		fmt.Printf("task not completed (%d steps)", replies)
	}
	fmt.Printf("; %d of %d actions accepted by the household\n", h.accepted, actions)
}

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
