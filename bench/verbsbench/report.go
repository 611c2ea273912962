package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"
)

// runLine is one line of bench/verbs.sh's runs file (perftest or verbsbench).
type runLine struct {
	Transport string  `json:"transport"`
	Device    string  `json:"device"`
	Op        string  `json:"op"`
	Size      int     `json:"size"`
	Tool      string  `json:"tool"`
	Rep       int     `json:"rep"`
	OK        bool    `json:"ok"`
	MBps      float64 `json:"mb_s"`
	OpsPerSec float64 `json:"ops_s"`
	Detail    *Result `json:"detail"` // verbsbench's own line
}

// Case is one line of the summary: a transport, op and size, both tools.
type Case struct {
	Transport   string    `json:"transport"`
	Device      string    `json:"device"`
	Op          string    `json:"op"`
	Size        int       `json:"size"`
	GoMBps      float64   `json:"go_mb_s"`
	PerftestMBs float64   `json:"perftest_mb_s"`
	Ratio       float64   `json:"ratio"` // Go / perftest (0: a side has no successful run)
	GoOps       float64   `json:"go_ops_s"`
	PerftestOps float64   `json:"perftest_ops_s"`
	GoRuns      []float64 `json:"go_runs_mb_s"`
	PerftestRun []float64 `json:"perftest_runs_mb_s"`
}

type metaFlag []string

func (m *metaFlag) String() string     { return strings.Join(*m, ",") }
func (m *metaFlag) Set(v string) error { *m = append(*m, v); return nil }

const goal = 0.8

// report turns the runs file into the Markdown table and the JSON summary.
func report(args []string) error {
	fs := flag.NewFlagSet("report", flag.ExitOnError)
	in := fs.String("in", "", "runs file (JSON lines)")
	md := fs.String("md", "", "Markdown output")
	js := fs.String("json", "", "JSON output")
	var meta metaFlag
	fs.Var(&meta, "meta", "key=value for the header (repeatable)")
	fs.Parse(args)
	data, err := os.ReadFile(*in)
	if err != nil {
		return err
	}
	var raws []json.RawMessage
	var cases []*Case
	find := func(r runLine) *Case {
		for _, c := range cases {
			if c.Transport == r.Transport && c.Op == r.Op && c.Size == r.Size {
				return c
			}
		}
		c := &Case{Transport: r.Transport, Device: r.Device, Op: r.Op, Size: r.Size}
		cases = append(cases, c)
		return c
	}
	type acc struct{ mb, ops []float64 }
	accs := map[*Case]*[2]acc{}
	how := "" // verbsbench's settings, from its first result

	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var r runLine
		if err := json.Unmarshal(line, &r); err != nil {
			return fmt.Errorf("%s: %w: %s", *in, err, line)
		}
		raws = append(raws, json.RawMessage(slices.Clone(line)))
		if d := r.Detail; how == "" && d != nil && d.Role == "client" {
			how = "every work request signaled"
			if d.Signal > 1 {
				how = fmt.Sprintf("every %d%s work request signaled", d.Signal, ordinal(d.Signal))
			}
			switch d.Poll {
			case "event":
				how += ", completions reaped with CQ.Wait (polls, and parks on the completion channel through Go's netpoller when the CQ is empty)"
			case "busy":
				how += ", completions reaped by spinning on CQ.Poll (as perftest)"
			default:
				how += ", polling " + d.Poll
			}
			if d.Slots > 1 {
				how += fmt.Sprintf(", %d buffer slots", d.Slots)
			}
		}
		c := find(r)
		if accs[c] == nil {
			accs[c] = &[2]acc{}
		}
		if !r.OK {
			continue
		}
		k := 0
		if r.Tool == "perftest" {
			k = 1
		}
		a := &accs[c][k]
		a.mb = append(a.mb, r.MBps)
		a.ops = append(a.ops, r.OpsPerSec)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	mean := func(v []float64) float64 {
		if len(v) == 0 {
			return 0
		}
		s := 0.0
		for _, x := range v {
			s += x
		}
		return s / float64(len(v))
	}
	below := 0
	for _, c := range cases {
		a := accs[c]
		c.GoRuns, c.PerftestRun = a[0].mb, a[1].mb
		c.GoMBps, c.PerftestMBs = mean(a[0].mb), mean(a[1].mb)
		c.GoOps, c.PerftestOps = mean(a[0].ops), mean(a[1].ops)
		if c.GoMBps > 0 && c.PerftestMBs > 0 {
			c.Ratio = c.GoMBps / c.PerftestMBs
		}
		if c.Ratio < goal {
			below++
		}
	}
	now := time.Now().Format(time.RFC3339)
	metaMap := map[string]string{}
	for _, kv := range meta {
		k, v, _ := strings.Cut(kv, "=")
		metaMap[k] = v
	}

	var b strings.Builder
	fmt.Fprintf(&b, "# internal/verbs vs perftest: RDMA WRITE and READ at queue depth %s\n\n", or(metaMap["qd"], "32"))
	fmt.Fprintf(&b, "%s, guest kernel %s, %s vCPUs (qemu TCG: absolute numbers are low and vary by ±20%%), %s s per run, %s repetitions per tool in alternating order, %s s in the guest.\n\n",
		now, or(metaMap["kernel"], "?"), or(metaMap["cpus"], "?"), or(metaMap["duration_s"], "?"), or(metaMap["reps"], "?"), or(metaMap["guest_seconds"], "?"))
	b.WriteString("| transport | device | op | size | Go MB/s | perftest MB/s | Go/perftest | Go ops/s | perftest ops/s | Go runs | perftest runs |\n")
	b.WriteString("|---|---|---|---:|---:|---:|---:|---:|---:|---|---|\n")
	for _, c := range cases {
		ratio := "n/a"
		if c.Ratio > 0 {
			ratio = fmt.Sprintf("%.2f", c.Ratio)
			if c.Ratio < goal {
				ratio += " (below 0.8)"
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %.1f | %.1f | %s | %.0f | %.0f | %s | %s |\n",
			c.Transport, c.Device, strings.ToUpper(c.Op), sizeStr(c.Size), c.GoMBps, c.PerftestMBs, ratio,
			c.GoOps, c.PerftestOps, list(c.GoRuns), list(c.PerftestRun))
	}
	if below == 0 {
		fmt.Fprintf(&b, "\nGoal Go/perftest ≥ %.1f: met in all %d cases.\n", goal, len(cases))
	} else {
		fmt.Fprintf(&b, "\nGoal Go/perftest ≥ %.1f: missed in %d of %d cases.\n", goal, below, len(cases))
	}
	fmt.Fprintf(&b, "\nMB = 2^20 bytes (perftest's unit). perftest: `ib_write_bw`/`ib_read_bw -R -d DEV -s SIZE -q 1 -t %s -D %s -F` as server and client processes. "+
		"Go: `verbsbench -role server` and `%s` (bench/verbsbench: internal/verbs, two processes, rdma_cm, "+
		"chained posts, %s, in batches of up to 64). "+
		"Both leave the first and last quarter of each run out of the measurement, as perftest does.\n",
		or(metaMap["qd"], "32"), or(metaMap["duration_s"], "5"),
		strings.TrimSpace(fmt.Sprintf("-role client -qd %s -duration %ss %s", or(metaMap["qd"], "32"), or(metaMap["duration_s"], "5"), metaMap["verbsbench_args"])), or(how, "?"))
	if *md != "" {
		if err := os.WriteFile(*md, []byte(b.String()), 0o644); err != nil {
			return err
		}
	} else {
		fmt.Print(b.String())
	}
	if *js != "" {
		doc := struct {
			Date    string            `json:"date"`
			Goal    float64           `json:"goal_ratio"`
			Meta    map[string]string `json:"meta"`
			Summary []*Case           `json:"summary"`
			Runs    []json.RawMessage `json:"runs"`
		}{now, goal, metaMap, cases, raws}
		out, err := json.MarshalIndent(doc, "", "  ")
		if err != nil {
			return err
		}
		if err := os.WriteFile(*js, append(out, '\n'), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func sizeStr(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprint(n)
}

func list(v []float64) string {
	if len(v) == 0 {
		return "none"
	}
	s := make([]string, len(v))
	for i, x := range v {
		s[i] = fmt.Sprintf("%.1f", x)
	}
	return strings.Join(s, ", ")
}

func ordinal(n int) string {
	switch {
	case n%100 >= 11 && n%100 <= 13:
		return "th"
	case n%10 == 1:
		return "st"
	case n%10 == 2:
		return "nd"
	case n%10 == 3:
		return "rd"
	}
	return "th"
}
