// Command blockreport turns the raw output of bench/block.sh (one results folder:
// meta.json, systems.jsonl, runs.jsonl, fio/*.json) into results.md, summary.json,
// plot.dat/plot.gp and (with gnuplot) plot.png. It runs on the host after the guest
// (bench/run.sh), and can be run again on any committed results folder:
//
//	go run ./bench/blockreport bench/results/<stamp>
//
// It never fails on a number: missing, failed or zero runs are reported as such.
// It fails (exit 1) only when the folder cannot be read or written.
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// systems in report order, with their labels
var sysOrder = []string{"brd", "nvmeof", "rnbd", "nbd", "rbd-rxe", "rbd-siw", "rbd-socket"}
var sysLabel = map[string]string{
	"brd":     "brd (local RAM)",
	"nvmeof":  "NVMe-oF/RDMA (rxe)",
	"rnbd":    "RNBD (rxe)",
	"nbd":     "NBD/TCP nbd-server",
	"rbd-rxe": "rbd (rxe)",
	"rbd-siw": "rbd (siw)",
	// rbdi's NBD Unix socket, fio's nbd engine: no kernel NBD hop
	"rbd-socket": "rbd (rxe) on its NBD socket",
}
var sysShort = map[string]string{"brd": "brd", "nvmeof": "NVMe-oF", "rnbd": "RNBD", "nbd": "NBD/TCP", "rbd-rxe": "rbd rxe", "rbd-siw": "rbd siw", "rbd-socket": "rbd socket"}

type workload struct {
	name, label string
	mbs         bool // headline is MB/s (sequential), else IOPS
	short       string
}

var wlOrder = []workload{
	{"rr4k1", "4k randread QD1", false, "4k rr QD1"},
	{"rr4k32", "4k randread QD32 (2x16)", false, "4k rr QD32"},
	{"rw4k32", "4k randwrite QD32 (2x16)", false, "4k rw QD32"},
	{"rw4k1", "4k randwrite QD1", false, "4k rw QD1"},
	{"sr128k8", "128k seq read QD8", true, "128k sr QD8"},
	{"sw128k8", "128k seq write QD8", true, "128k sw QD8"},
	{"sr1m8", "1M seq read QD8", true, "1M sr QD8"},
	{"sw1m8", "1M seq write QD8", true, "1M sw QD8"},
}

// hop is a fixed reference quoted from ../shared/reference/nbd-hop-notes.md
// (another guest boot, 2026-11-25): column (c) "Go pipe N=2" -- a Go NBD server
// doing only memcpy to RAM behind kernel NBD, the ceiling of rbdi's architecture --
// and the NVMe-oF/RDMA figure of that same boot. Headline units as in wlOrder.
type hopRef struct{ value, nvme, cpu float64 }

var hop = map[string]hopRef{
	"rr4k1":  {1424, 2330, 789},
	"rr4k32": {11212, 11375, 143},
	"rw4k32": {7697, 12350, 218},
	"sr1m8":  {166.2, 100.3, 8293},
	"sw1m8":  {78.5, 82.5, 18643},
}

type run struct {
	System   string  `json:"system"`
	Workload string  `json:"workload"`
	Rep      int     `json:"rep"`
	FioRC    int     `json:"fio_rc"`
	Device   string  `json:"device"`
	FioJSON  string  `json:"fio_json"`
	FioArgs  string  `json:"fio_args"`
	Samples  string  `json:"samples"`
	JobStart float64 `json:"job_start"`
	JobEnd   float64 `json:"job_end"`
	Daemons  string  `json:"daemons"`

	OK        bool     `json:"ok"`
	Problem   string   `json:"problem,omitempty"`
	IOPS      float64  `json:"iops"`
	MBs       float64  `json:"mb_s"`
	LatMeanUs float64  `json:"clat_mean_us"`
	LatP99Us  float64  `json:"clat_p99_us"`
	TotalIOs  float64  `json:"fio_total_ios"`
	WindowS   float64  `json:"window_s"`
	WindowAt  float64  `json:"window_start"`
	WindowOK  bool     `json:"window_inside_timed_phase"`
	BusyVCPU  *float64 `json:"busy_vcpus,omitempty"`
	CPUusIO   *float64 `json:"guest_cpu_us_per_io,omitempty"`
	RbdiCPU   *float64 `json:"rbdi_cpu_us_per_io,omitempty"`
	RbdtCPU   *float64 `json:"rbdt_cpu_us_per_io,omitempty"`
	RbdiCtx   *float64 `json:"rbdi_ctxsw_per_io,omitempty"`
	RbdtCtx   *float64 `json:"rbdt_ctxsw_per_io,omitempty"`
}

type sysRep struct {
	System string `json:"system"`
	Rep    int    `json:"rep"`
	Status string `json:"status"`
	Reason string `json:"reason"`
	Device string `json:"device"`
}

// median of every metric of the ok runs of one system × workload
type med struct {
	Runs      int      `json:"runs"`
	IOPS      float64  `json:"iops"`
	MBs       float64  `json:"mb_s"`
	LatMeanUs float64  `json:"clat_mean_us"`
	LatP99Us  float64  `json:"clat_p99_us"`
	BusyVCPU  *float64 `json:"busy_vcpus,omitempty"`
	CPUusIO   *float64 `json:"guest_cpu_us_per_io,omitempty"`
	RbdiCPU   *float64 `json:"rbdi_cpu_us_per_io,omitempty"`
	RbdtCPU   *float64 `json:"rbdt_cpu_us_per_io,omitempty"`
	RbdiCtx   *float64 `json:"rbdi_ctxsw_per_io,omitempty"`
	RbdtCtx   *float64 `json:"rbdt_ctxsw_per_io,omitempty"`
	Headline  float64  `json:"headline"`
	Unit      string   `json:"unit"`
	Spread    string   `json:"headline_min_max"`
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: blockreport RESULTS_DIR")
		os.Exit(2)
	}
	dir := os.Args[1]
	meta := map[string]any{}
	if b, err := os.ReadFile(filepath.Join(dir, "meta.json")); err == nil {
		_ = json.Unmarshal(b, &meta)
	}
	clk := 100.0
	if v, ok := meta["clk_tck"].(float64); ok && v > 0 {
		clk = v
	}
	var runs []*run
	if err := readJSONL(filepath.Join(dir, "runs.jsonl"), func(b []byte) error {
		r := &run{}
		if err := json.Unmarshal(b, r); err != nil {
			return err
		}
		runs = append(runs, r)
		return nil
	}); err != nil {
		fmt.Fprintln(os.Stderr, "blockreport:", err)
		os.Exit(1)
	}
	var sreps []sysRep
	_ = readJSONL(filepath.Join(dir, "systems.jsonl"), func(b []byte) error {
		var s sysRep
		if json.Unmarshal(b, &s) == nil {
			sreps = append(sreps, s)
		}
		return nil
	})
	ramp, _ := meta["ramp_s"].(float64)
	for _, r := range runs {
		r.evaluate(dir, clk, ramp)
	}

	// medians
	meds := map[string]map[string]*med{}
	for _, s := range sysOrder {
		meds[s] = map[string]*med{}
	}
	wlSeen := map[string]bool{}
	for _, r := range runs {
		wlSeen[r.Workload] = true
	}
	var wls []workload
	for _, w := range wlOrder {
		if wlSeen[w.name] {
			wls = append(wls, w)
		}
	}
	for _, s := range sysOrder {
		for _, w := range wls {
			var sel []*run
			for _, r := range runs {
				if r.System == s && r.Workload == w.name && r.OK {
					sel = append(sel, r)
				}
			}
			if len(sel) == 0 {
				continue
			}
			m := &med{Runs: len(sel)}
			get := func(f func(*run) float64) float64 {
				v := make([]float64, len(sel))
				for i, r := range sel {
					v[i] = f(r)
				}
				return median(v)
			}
			getp := func(f func(*run) *float64) *float64 {
				var v []float64
				for _, r := range sel {
					if p := f(r); p != nil {
						v = append(v, *p)
					}
				}
				if len(v) == 0 {
					return nil
				}
				x := median(v)
				return &x
			}
			m.IOPS = get(func(r *run) float64 { return r.IOPS })
			m.MBs = get(func(r *run) float64 { return r.MBs })
			m.LatMeanUs = get(func(r *run) float64 { return r.LatMeanUs })
			m.LatP99Us = get(func(r *run) float64 { return r.LatP99Us })
			m.BusyVCPU = getp(func(r *run) *float64 { return r.BusyVCPU })
			m.CPUusIO = getp(func(r *run) *float64 { return r.CPUusIO })
			m.RbdiCPU = getp(func(r *run) *float64 { return r.RbdiCPU })
			m.RbdtCPU = getp(func(r *run) *float64 { return r.RbdtCPU })
			m.RbdiCtx = getp(func(r *run) *float64 { return r.RbdiCtx })
			m.RbdtCtx = getp(func(r *run) *float64 { return r.RbdtCtx })
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, r := range sel {
				h := headline(w, r.IOPS, r.MBs)
				lo, hi = math.Min(lo, h), math.Max(hi, h)
			}
			m.Headline = headline(w, m.IOPS, m.MBs)
			m.Unit = unit(w)
			m.Spread = fmt.Sprintf("%s..%s", num(lo), num(hi))
			meds[s][w.name] = m
		}
	}

	// why a system has no figures: its set-up/verify status per repetition
	why := map[string]string{}
	present := map[string]bool{}
	for _, sr := range sreps {
		present[sr.System] = true
		if sr.Status != "ok" && why[sr.System] == "" {
			why[sr.System] = sr.Status + ": " + sr.Reason
		}
	}
	for _, r := range runs {
		present[r.System] = true
	}
	var systems []string
	for _, s := range sysOrder {
		if present[s] {
			systems = append(systems, s)
		}
	}
	cell := func(s string, w workload) string {
		if m := meds[s][w.name]; m != nil {
			return num(m.Headline)
		}
		if why[s] != "" {
			if strings.HasPrefix(why[s], "verify") {
				return "failed"
			}
			return "n/a"
		}
		return "failed"
	}

	var md bytes.Buffer
	p := func(f string, a ...any) { fmt.Fprintf(&md, f, a...) }
	p("# rbd block-device benchmark (%v mode)\n\n", meta["mode"])
	p("Guest: %v, %v vCPUs (qemu TCG), %v; one brd device of %v MiB is the backend of every system. "+
		"%v repetition(s), %v s per run after %v s ramp; medians over repetitions. rbd: %v, %v.\n\n",
		meta["kernel"], meta["cpus"], meta["date"], meta["ram_mb"], meta["reps"], meta["runtime_s"], meta["ramp_s"], rbdVersion(meta), meta["fio"])
	p("Method: one guest boot; systems interleaved within each repetition (the order rotates by one per repetition); " +
		"one system is set up at a time on the same /dev/ram0, its data path verified (8 MiB random pattern written " +
		"through the device, read back from /dev/ram0 with O_DIRECT, cmp), all workloads run, torn down. " +
		"fio libaio direct=1 time_based with ramp; caches dropped and scheduler `none` before every run. " +
		"Guest CPU µs/I/O = busy jiffies of /proc/stat (sampled every 0.2 s) over the samples inside fio's timed phase ÷ (fio IOPS × that window); " +
		"it counts everything in the guest (fio, kernel, daemons, the emulated RDMA device). " +
		"RDMA systems all use soft-RoCE rxe0 (10.77.0.1) except rbd (siw) on soft-iWARP siw0 (10.79.0.1). " +
		"nbd-server does buffered I/O on /dev/ram0 (it has no O_DIRECT option), one TCP connection. " +
		"rbd on its NBD socket: the same rbd over rxe0, served on rbdi's NBD Unix socket with no kernel device, fio's nbd engine " +
		"(libnbd, one connection per job) instead of libaio on /dev/rbdiN: the difference to rbd (rxe) is the kernel NBD hop.\n\n")

	p("## Systems\n\n| system | status |\n|---|---|\n")
	for _, s := range systems {
		st := "ok"
		for _, sr := range sreps {
			if sr.System == s && sr.Status != "ok" {
				st = fmt.Sprintf("rep %d %s: %s", sr.Rep, sr.Status, sr.Reason)
				break
			}
		}
		if st == "ok" {
			dev := ""
			for _, sr := range sreps {
				if sr.System == s {
					dev = sr.Device
				}
			}
			st = "ok, verified (" + dev + ")"
		}
		p("| %s | %s |\n", sysLabel[s], strings.ReplaceAll(st, "|", "/"))
	}

	p("\n## Main table (median; 4k rows IOPS, 128k/1M rows MB/s)\n\n| workload |")
	for _, s := range systems {
		p(" %s |", sysLabel[s])
	}
	p(" rbd (rxe) ÷ NVMe-oF | hop ceiling ÷ NVMe-oF (other boot) | rbd socket ÷ rbd (rxe) |\n|---|")
	for range systems {
		p("---:|")
	}
	p("---:|---:|---:|\n")
	for _, w := range wls {
		p("| %s |", w.label)
		for _, s := range systems {
			p(" %s |", cell(s, w))
		}
		p(" %s | %s | %s |\n", ratio(meds["rbd-rxe"][w.name], meds["nvmeof"][w.name]), hopVsNvme(w.name),
			ratio(meds["rbd-socket"][w.name], meds["rbd-rxe"][w.name]))
	}

	p("\n## How far is rbd from each peer\n\n")
	for _, w := range wls {
		p("- **%s**: %s\n", w.label, howFar(w, meds, why))
	}

	p("\n## Per workload\n\nMedians; `×` = rbd's figure ÷ this row's (for latency and CPU lower is better, the ratio is still rbd ÷ row). ")
	p("The hop ceiling row is quoted from `../shared/reference/nbd-hop-notes.md`, column (c) \"Go pipe N=2\" (a memcpy-only Go NBD server behind kernel NBD, unix sockets, no RDMA): a different guest boot, a fixed reference, not measured here.\n")
	for _, w := range wls {
		p("\n### %s (%s)\n\n| system | %s | MB/s | mean lat µs | p99 lat µs | guest CPU µs/I/O | busy vCPUs | runs (min..max) | rbd (rxe) × | rbd (siw) × |\n|---|---:|---:|---:|---:|---:|---:|---|---:|---:|\n",
			w.label, unit(w), unit(w))
		for _, s := range systems {
			m := meds[s][w.name]
			if m == nil {
				p("| %s | %s |  |  |  |  |  |  |  |  |\n", sysLabel[s], cell(s, w)+reasonNote(why[s]))
				continue
			}
			rx, sx := "", ""
			if s != "rbd-rxe" {
				rx = ratio(meds["rbd-rxe"][w.name], m)
			}
			if s != "rbd-siw" {
				sx = ratio(meds["rbd-siw"][w.name], m)
			}
			p("| %s | %s | %s | %s | %s | %s | %s | %d (%s) | %s | %s |\n", sysLabel[s], num(m.Headline), num(m.MBs),
				num(m.LatMeanUs), num(m.LatP99Us), nump(m.CPUusIO), num2p(m.BusyVCPU), m.Runs, m.Spread, rx, sx)
		}
		if h, ok := hop[w.name]; ok {
			p("| hop ceiling (nbd-hop-notes, other boot) | %s |  |  |  | %s |  |  | %s | %s |\n", num(h.value), num(h.cpu),
				ratioV(meds["rbd-rxe"][w.name], w, h.value), ratioV(meds["rbd-siw"][w.name], w, h.value))
		}
	}

	p("\n## rbd daemons (median per I/O; CPU = utime+stime of all threads, context switches = voluntary + involuntary, over the same window)\n\n")
	p("| workload | system | rbdi CPU µs/I/O | rbdt CPU µs/I/O | rbdi ctxsw/I/O | rbdt ctxsw/I/O | guest CPU µs/I/O |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, w := range wls {
		for _, s := range []string{"rbd-rxe", "rbd-siw", "rbd-socket"} {
			m := meds[s][w.name]
			if m == nil {
				if present[s] {
					p("| %s | %s | %s |  |  |  |  |\n", w.label, sysLabel[s], cell(s, w))
				}
				continue
			}
			p("| %s | %s | %s | %s | %s | %s | %s |\n", w.label, sysLabel[s], nump(m.RbdiCPU), nump(m.RbdtCPU),
				num2p(m.RbdiCtx), num2p(m.RbdtCtx), nump(m.CPUusIO))
		}
	}
	p("\nRaw fio JSON of every run: `fio/`; every figure of every run and every median: `summary.json`; plot: `plot.png`.\n")

	if err := os.WriteFile(filepath.Join(dir, "results.md"), md.Bytes(), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "blockreport:", err)
		os.Exit(1)
	}
	sum := map[string]any{"meta": meta, "systems": sreps, "medians": meds, "runs": runs,
		"hop_reference": map[string]any{"source": "../shared/reference/nbd-hop-notes.md, column (c) Go pipe N=2, other boot", "figures": hop}}
	b, _ := json.MarshalIndent(sum, "", "  ")
	if err := os.WriteFile(filepath.Join(dir, "summary.json"), append(b, '\n'), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "blockreport:", err)
		os.Exit(1)
	}
	plot(dir, wls, meds, meta)
	os.Stdout.Write(md.Bytes())
}

func (r *run) evaluate(dir string, clk, ramp float64) {
	fail := func(s string) { r.OK, r.Problem = false, s }
	b, err := os.ReadFile(filepath.Join(dir, "fio", filepath.Base(r.FioJSON)))
	if err != nil {
		fail("no fio JSON")
		return
	}
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:] // fio may print notes before the JSON
	}
	var f struct {
		Jobs []struct {
			Error int                        `json:"error"`
			Read  map[string]json.RawMessage `json:"read"`
			Write map[string]json.RawMessage `json:"write"`
		} `json:"jobs"`
	}
	if err := json.Unmarshal(b, &f); err != nil || len(f.Jobs) == 0 {
		fail("unreadable fio JSON")
		return
	}
	j := f.Jobs[0]
	side := j.Read
	if strings.Contains(r.FioArgs, "write") {
		side = j.Write
	}
	var st struct {
		IOPS     float64 `json:"iops"`
		BW       float64 `json:"bw_bytes"`
		TotalIOs float64 `json:"total_ios"`
		Clat     struct {
			Mean float64            `json:"mean"`
			Pct  map[string]float64 `json:"percentile"`
		} `json:"clat_ns"`
	}
	raw, _ := json.Marshal(side)
	_ = json.Unmarshal(raw, &st)
	r.IOPS, r.MBs, r.TotalIOs = st.IOPS, st.BW/1e6, st.TotalIOs
	r.LatMeanUs, r.LatP99Us = st.Clat.Mean/1e3, st.Clat.Pct["99.000000"]/1e3
	// the window: the samples inside fio's timed phase, [last job start + ramp,
	// first job end], 0.3 s in from each side. Sample lines: "C time busy total"
	// (every 0.2 s) and, for rbd, two "D time busy total" + 3 figures per daemon.
	var c0, c1, d0, d1 []float64
	if sb, err := os.ReadFile(filepath.Join(dir, r.Samples)); err == nil && r.JobStart > 0 && r.JobEnd > 0 {
		ws, we := r.JobStart+ramp+0.3, r.JobEnd-0.3
		for _, line := range strings.Split(string(sb), "\n") {
			kind, rest, _ := strings.Cut(line, " ")
			if kind != "C" && kind != "D" { // first format: no prefix, every line full
				kind, rest = "D", line
			}
			v := fields(rest)
			if len(v) < 3 || v[0] < ws || v[0] > we {
				continue
			}
			if c0 == nil {
				c0 = v
			} else {
				c1 = v
			}
			if kind == "D" && len(v) >= 9 {
				if d0 == nil {
					d0 = v
				} else {
					d1 = v
				}
			}
		}
	}
	if c0 != nil && c1 != nil {
		r.WindowS, r.WindowAt = c1[0]-c0[0], c0[0]
		r.WindowOK = r.WindowS >= 0.5
		if r.WindowOK && r.IOPS > 0 {
			ios := r.IOPS * r.WindowS
			busy := c1[1] - c0[1]
			bv, cu := busy/clk/r.WindowS, busy*1e6/clk/ios
			r.BusyVCPU, r.CPUusIO = &bv, &cu
		}
	}
	if r.Daemons != "" && d0 != nil && d1 != nil && d1[0]-d0[0] >= 0.5 && r.IOPS > 0 {
		ios := r.IOPS * (d1[0] - d0[0])
		d := func(i int) float64 { return d1[i] - d0[i] }
		cpu := func(i int) *float64 { x := d(i) * 1e6 / clk / ios; return &x }
		ctx := func(i int) *float64 { x := (d(i) + d(i+1)) / ios; return &x }
		r.RbdiCPU, r.RbdiCtx = cpu(3), ctx(4)
		r.RbdtCPU, r.RbdtCtx = cpu(6), ctx(7)
	} else if r.Daemons != "" {
		r.Problem = "the daemon samples are not both inside fio's timed phase: no daemon figures"
	}
	if !r.WindowOK {
		r.Problem = "no CPU samples (0.5 s or more) inside fio's timed phase: no CPU figures"
	}
	switch {
	case r.FioRC != 0 || j.Error != 0:
		fail(fmt.Sprintf("fio rc %d, error %d", r.FioRC, j.Error))
	case r.IOPS <= 0:
		fail("no I/O")
	default:
		r.OK = true
	}
}

func plot(dir string, wls []workload, meds map[string]map[string]*med, meta map[string]any) {
	peers := []string{"nvmeof", "rnbd", "nbd", "rbd-rxe", "rbd-siw", "rbd-socket"}
	var dat bytes.Buffer
	fmt.Fprintf(&dat, "%q", "workload")
	for _, s := range peers {
		fmt.Fprintf(&dat, " %q", sysShort[s])
	}
	fmt.Fprintln(&dat)
	maxv, any := 1.0, false
	for _, w := range wls {
		fmt.Fprintf(&dat, "%q", w.short)
		ref := meds["nvmeof"][w.name]
		for _, s := range peers {
			m := meds[s][w.name]
			if m == nil || ref == nil || ref.Headline <= 0 {
				fmt.Fprint(&dat, " NaN")
				continue
			}
			v := m.Headline / ref.Headline
			maxv, any = math.Max(maxv, v), true
			fmt.Fprintf(&dat, " %.3f", v)
		}
		fmt.Fprintln(&dat)
	}
	_ = os.WriteFile(filepath.Join(dir, "plot.dat"), dat.Bytes(), 0o644)
	if !any {
		fmt.Fprintln(os.Stderr, "blockreport: no figures relative to NVMe-oF: no plot")
		return
	}
	n := len(peers)
	var gp bytes.Buffer
	fmt.Fprintf(&gp, `# gnuplot plot.gp (in this folder) -> plot.png; written by bench/blockreport
# plot.dat: each system's median headline (IOPS or MB/s) ÷ NVMe-oF's; NaN = no figure
set terminal pngcairo size 1400,700 font "DejaVu Sans,13"
set output "plot.png"
set title "rbd block benchmark (%v mode, repetitions: %v, guest %v, qemu TCG): throughput relative to kernel NVMe-oF/RDMA = 1\n4k workloads: IOPS, sequential: MB/s; medians; brd (local RAM, far off the scale) omitted; missing bar = n/a or failed"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set datafile missing "NaN"
set ylabel "÷ NVMe-oF/RDMA (higher is better)"
set yrange [0:%.2f]
set grid ytics
set key outside bottom center horizontal
set key autotitle columnheader
set xrange [-0.6:%d-0.4]
set xtics nomirror
set arrow from graph 0, first 1 to graph 1, first 1 nohead dt 2 lw 2 lc rgb "black"
`, meta["mode"], meta["reps"], meta["kernel"], maxv*1.15, len(wls))
	colors := []string{"#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"}
	fmt.Fprintf(&gp, "plot ")
	for i := range peers {
		if i > 0 {
			fmt.Fprintf(&gp, ", \\\n     ")
		}
		fmt.Fprintf(&gp, "'plot.dat' using %d:xtic(1) lc rgb %q", i+2, colors[i])
	}
	for i := range peers {
		// value labels above each bar: cluster of n bars, gap 1 -> bar width 1/(n+1)
		off := (float64(i) - float64(n-1)/2) / float64(n+1)
		fmt.Fprintf(&gp, ", \\\n     'plot.dat' using ($0+%.4f):($%d):(sprintf(\"%%.2f\", $%d)) with labels offset 0,0.7 font \",10\" notitle", off, i+2, i+2)
	}
	fmt.Fprintln(&gp)
	_ = os.WriteFile(filepath.Join(dir, "plot.gp"), gp.Bytes(), 0o644)
	if _, err := exec.LookPath("gnuplot"); err != nil {
		fmt.Fprintln(os.Stderr, "blockreport: no gnuplot (scripts/deps.sh installs gnuplot-nox): no plot.png")
		return
	}
	cmd := exec.Command("gnuplot", "plot.gp")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "blockreport: gnuplot: %v\n%s", err, out)
	}
}

func howFar(w workload, meds map[string]map[string]*med, why map[string]string) string {
	var parts []string
	for _, r := range []string{"rbd-rxe", "rbd-siw", "rbd-socket"} {
		rm := meds[r][w.name]
		if rm == nil && r == "rbd-socket" {
			continue // an older run, or not asked for
		}
		if rm == nil {
			parts = append(parts, sysLabel[r]+" has no figure")
			continue
		}
		var vs []string
		for _, s := range []string{"nvmeof", "rnbd", "nbd", "brd"} {
			if m := meds[s][w.name]; m != nil {
				vs = append(vs, fmt.Sprintf("%s %s", ratio(rm, m), sysShort[s]))
			} else {
				vs = append(vs, sysShort[s]+" n/a")
			}
		}
		if r == "rbd-siw" || r == "rbd-socket" {
			if m := meds["rbd-rxe"][w.name]; m != nil {
				vs = append(vs, ratio(rm, m)+" rbd rxe")
			}
		}
		if h, ok := hop[w.name]; ok {
			hv := ratioV(rm, w, h.value) + " hop ceiling (raw, other boot"
			if n := meds["nvmeof"][w.name]; n != nil && n.Headline > 0 {
				hv += fmt.Sprintf("; %.2f× once both are divided by their own boot's NVMe-oF", (rm.Headline/n.Headline)/(h.value/h.nvme))
			}
			vs = append(vs, hv+")")
		}
		parts = append(parts, fmt.Sprintf("%s = %s", sysLabel[r], strings.Join(vs, ", ")))
	}
	return strings.Join(parts, "; ")
}

// rbdVersion: what rbdi --version said in the guest (newer runs), else the tree's commit
func rbdVersion(meta map[string]any) string {
	if v, ok := meta["rbd_version"].(string); ok && v != "" {
		return v
	}
	return fmt.Sprintf("tree at commit %v", meta["rbd_commit"])
}

func headline(w workload, iops, mbs float64) float64 {
	if w.mbs {
		return mbs
	}
	return iops
}
func unit(w workload) string {
	if w.mbs {
		return "MB/s"
	}
	return "IOPS"
}
func ratio(a, b *med) string {
	if a == nil || b == nil || b.Headline <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a.Headline/b.Headline)
}
func ratioV(a *med, w workload, v float64) string {
	if a == nil || v <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a.Headline/v)
}
func hopVsNvme(wl string) string {
	if h, ok := hop[wl]; ok {
		return fmt.Sprintf("%.2f×", h.value/h.nvme)
	}
	return "–"
}
func reasonNote(s string) string {
	if s == "" {
		return ""
	}
	return " (" + strings.ReplaceAll(s, "|", "/") + ")"
}

// num formats with thousands separators and sensible precision
func num(v float64) string {
	switch {
	case math.IsNaN(v) || math.IsInf(v, 0):
		return "–"
	case math.Abs(v) >= 1000:
		s := strconv.FormatFloat(math.Round(v), 'f', 0, 64)
		var out []byte
		for i, c := range []byte(s) {
			if i > 0 && (len(s)-i)%3 == 0 && s[i-1] != '-' {
				out = append(out, ',')
			}
			out = append(out, c)
		}
		return string(out)
	case math.Abs(v) >= 100:
		return fmt.Sprintf("%.0f", v)
	default:
		return fmt.Sprintf("%.1f", v)
	}
}
func nump(p *float64) string {
	if p == nil {
		return "–"
	}
	return num(*p)
}
func num2p(p *float64) string {
	if p == nil {
		return "–"
	}
	return fmt.Sprintf("%.2f", *p)
}

func fields(s string) []float64 {
	var v []float64
	for _, f := range strings.Fields(s) {
		x, err := strconv.ParseFloat(f, 64)
		if err != nil {
			return nil
		}
		v = append(v, x)
	}
	return v
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func readJSONL(path string, f func([]byte) error) error {
	fh, err := os.Open(path)
	if err != nil {
		return err
	}
	defer fh.Close()
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if line := bytes.TrimSpace(sc.Bytes()); len(line) > 0 {
			if err := f(line); err != nil {
				return fmt.Errorf("%s: %v", path, err)
			}
		}
	}
	return sc.Err()
}
