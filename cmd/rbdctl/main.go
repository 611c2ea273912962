// Command rbdctl adds, removes and lists rbd devices and shows their stats,
// with the flags of the 2015 rbdctl: -n/--new, -r/--rem, -l/--list, plus
// -s/--stats, or the same as commands: map, unmap, list, stats (see
// rbdctl(8)). It talks to rbdi (and, on a target host, rbdt) through their
// control sockets. It exits 0 when done, 1 when the action failed and 2 on
// a usage error.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"rbd/internal/api"
	"rbd/internal/daemon"
	"rbd/internal/stats"
	"rbd/internal/version"
)

type options struct {
	add, remove, list, showStats bool
	noReuse                      bool
	addr, dev                    string
	port                         uint16
	output                       string
	socket, targetSocket         string
	queues                       int
	readOnly                     bool
	keyFile                      string
	verb                         string // the command given instead of -n, -r, -l, -s
	timeout                      time.Duration

	// the NBD socket of a new device (--nbd-socket ...)
	nbdSocket, socketMode, socketOwner string
	noKernelDevice                     bool
}

// Exit codes, as rbdctl(8) documents them.
const (
	exitOK     = 0 // done
	exitFailed = 1 // the action failed
	exitUsage  = 2 // the command line is wrong
)

func main() {
	os.Exit(execute(os.Args[1:], os.Stdout, os.Stderr))
}

// execute runs rbdctl with args and returns its exit code.
func execute(args []string, stdout, stderr io.Writer) int {
	cmd := newRootCmd(stdout)
	cmd.SetArgs(args)
	cmd.SetErr(stderr)
	err := cmd.Execute()
	if err != nil {
		fmt.Fprintln(stderr, "rbdctl:", err)
	}
	return exitCode(err)
}

// usageError is a command line that is wrong; failure is an action that
// failed. Errors that are neither come from cobra before any action started
// (unknown flags and commands, flag groups, arguments): usage errors too.
type (
	usageError struct{ error }
	failure    struct{ error }
)

func (e *usageError) Unwrap() error { return e.error }
func (e *failure) Unwrap() error    { return e.error }

func exitCode(err error) int {
	var ue *usageError
	var f *failure
	switch {
	case err == nil:
		return exitOK
	case errors.As(err, &ue):
		return exitUsage
	case errors.As(err, &f):
		return exitFailed
	}
	return exitUsage
}

// action is the RunE of the root command and of the verbs: it runs the
// action that o's flags (or the verb) chose, and marks what it returns as a
// failure unless it is a usage error.
func action(o *options, verb func()) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, _ []string) error {
		if verb != nil {
			verb()
		}
		err := run(cmd, o)
		var ue *usageError
		if err == nil || errors.As(err, &ue) {
			return err
		}
		return &failure{err}
	}
}

// noArgs refuses operands, naming the commands there are.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	if cmd.HasSubCommands() {
		return fmt.Errorf("unknown command %q: the commands are map, unmap, list, stats and completion (rbdctl --help)", args[0])
	}
	return fmt.Errorf("%s takes no operands, got %q (the device goes with -d)", cmd.CommandPath(), args)
}

// The flags of the actions, on the root command (with -n, -r, -s) and on the
// verbs that take them.
func addrFlags(c *cobra.Command, o *options) {
	f := c.Flags()
	f.StringVarP(&o.addr, "addr", "a", "", "target address or name (with -n)")
	f.Uint16VarP(&o.port, "port", "p", 65000, "target port (with -n)")
	f.IntVarP(&o.queues, "queues", "q", 0, "RDMA queues for the new device (default: rbdi's)")
	f.BoolVar(&o.readOnly, "read-only", false, "map the new device read-only")
	f.BoolVar(&o.noReuse, "no-reuse", false, "fail when this host has the export mapped already (default: print that device)")
	f.StringVar(&o.nbdSocket, "nbd-socket", "", "also serve the new device on this NBD Unix socket (QEMU, qemu-img, nbdcopy, fio's nbd engine)")
	f.BoolVar(&o.noKernelDevice, "no-kernel-device", false, "make no /dev/rbdiN, serve the device on --nbd-socket only")
	f.StringVar(&o.socketMode, "socket-mode", "", "permissions of the NBD socket, octal (default 0600: root only)")
	f.StringVar(&o.socketOwner, "socket-owner", "", "owner of the NBD socket, USER[:GROUP] (default: rbdi's, root)")
	f.StringVar(&o.keyFile, "key-file", "", "authenticate with the export's pre-shared key in this root-only file, e.g. /etc/rbd/keys/db.key (rbdi reads it; with -n)")
}

func devFlag(c *cobra.Command, o *options, usage string) {
	c.Flags().StringVarP(&o.dev, "dev", "d", "", usage)
}

func newRootCmd(out io.Writer) *cobra.Command {
	var o options
	cmd := &cobra.Command{
		Use:   "rbdctl (-n -a ADDR -d DEV [-p PORT] | -r -d /dev/rbdiN | -l | -s -d DEV) [-o json]",
		Short: "control rbd devices",
		Long: `rbdctl adds, removes and lists rbd devices:

  rbdctl -n -a <target-addr> -p 65000 -d /dev/ram0   new device (prints /dev/rbdiN)
  rbdctl -r -d /dev/rbdi0                            remove it
  rbdctl -l                                          list devices (and, on a target, sessions)
  rbdctl -s -d /dev/rbdi0                            a device's stats (on a target: -d EXPORT)

The same as commands: rbdctl map -a ADDR -d DEV, rbdctl unmap -d /dev/rbdiN,
rbdctl list, rbdctl stats -d DEV. Exit status: 0 done, 1 failed, 2 usage.`,
		Args:          noArgs,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       version.String(),
		RunE:          action(&o, nil),
	}
	cmd.SetOut(out)
	cmd.SetVersionTemplate("{{.Name}} {{.Version}}\n")
	cmd.CompletionOptions.DisableDefaultCmd = true // ours below: bash, zsh, fish
	pf := cmd.PersistentFlags()
	pf.StringVarP(&o.output, "output", "o", "text", "output format: text or json")
	pf.StringVar(&o.socket, "socket", "/run/rbd/rbdi.sock", "rbdi's control socket")
	pf.StringVar(&o.targetSocket, "target-socket", "/run/rbd/rbdt.sock", "rbdt's control socket (for -l and -s on a target host)")
	pf.DurationVar(&o.timeout, "timeout", 90*time.Second, "how long to wait for the daemon")
	f := cmd.Flags()
	f.Bool("version", false, "print the version (and the Go version it was built with) and exit")
	f.BoolVarP(&o.add, "new", "n", false, "add a device: needs -a and -d")
	f.BoolVarP(&o.remove, "rem", "r", false, "remove the device given with -d")
	f.BoolVarP(&o.list, "list", "l", false, "list devices")
	f.BoolVarP(&o.showStats, "stats", "s", false, "show the stats of the device (or target export) given with -d")
	addrFlags(cmd, &o)
	devFlag(cmd, &o, "with -n: the device on the target (/dev/ram0); with -r, -s: /dev/rbdiN")
	cmd.MarkFlagsMutuallyExclusive("new", "rem", "list", "stats")
	cmd.MarkFlagsOneRequired("new", "rem", "list", "stats")
	cmd.SetFlagErrorFunc(func(c *cobra.Command, err error) error { return &usageError{err} })

	verb := func(use, short string, set *bool) *cobra.Command {
		v := &cobra.Command{Use: use, Short: short, Args: noArgs, SilenceUsage: true, SilenceErrors: true,
			RunE: action(&o, func() { *set, o.verb = true, strings.Fields(use)[0] })}
		return v
	}
	mapCmd := verb("map -a ADDR -d DEV [-p PORT] [-q N] [--read-only] [--no-reuse] [--key-file FILE] [--nbd-socket PATH [--no-kernel-device]]", "add a device, as -n (prints /dev/rbdiN)", &o.add)
	addrFlags(mapCmd, &o)
	devFlag(mapCmd, &o, "the device on the target, e.g. /dev/ram0")
	unmapCmd := verb("unmap -d /dev/rbdiN", "remove a device, as -r", &o.remove)
	devFlag(unmapCmd, &o, "the device to remove, /dev/rbdiN")
	listCmd := verb("list", "list devices (and, on a target, exports and sessions), as -l", &o.list)
	statsCmd := verb("stats -d DEV", "a device's stats (on a target: an export's), as -s", &o.showStats)
	devFlag(statsCmd, &o, "the device, /dev/rbdiN (on a target: an export)")
	cmd.AddCommand(mapCmd, unmapCmd, listCmd, statsCmd, completionCmd(out))
	// completion of values: the local devices for unmap and stats, the formats
	mapped := func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		devs, _ := filepath.Glob("/dev/rbdi[0-9]*")
		return devs, cobra.ShellCompDirectiveNoFileComp
	}
	unmapCmd.RegisterFlagCompletionFunc("dev", mapped)
	statsCmd.RegisterFlagCompletionFunc("dev", mapped)
	cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{"text", "json"}, cobra.ShellCompDirectiveNoFileComp))
	return cmd
}

// completionCmd writes the shell completion script that cobra generates.
func completionCmd(out io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "completion bash|zsh|fish",
		Short: "print the shell completion script (make install installs them)",
		Long: `completion prints rbdctl's completion script for bash, zsh or fish.
make install puts them where the shells look:
  bash  PREFIX/share/bash-completion/completions/rbdctl
  zsh   PREFIX/share/zsh/vendor-completions/_rbdctl
  fish  PREFIX/share/fish/vendor_completions.d/rbdctl.fish`,
		ValidArgs:             []string{"bash", "zsh", "fish"},
		Args:                  cobra.MatchAll(cobra.ExactArgs(1), cobra.OnlyValidArgs),
		DisableFlagsInUseLine: true,
		SilenceUsage:          true,
		SilenceErrors:         true,
		RunE: func(cmd *cobra.Command, args []string) error {
			root := cmd.Root()
			var err error
			switch args[0] {
			case "bash":
				err = root.GenBashCompletionV2(out, true)
			case "zsh":
				err = root.GenZshCompletion(out)
			case "fish":
				err = root.GenFishCompletion(out, true)
			}
			if err != nil {
				return &failure{err}
			}
			return nil
		},
	}
}

// flagName is how messages name the action: "-n" or, given as a command, "map".
func (o *options) flagName(flag string) string {
	if o.verb != "" {
		return o.verb
	}
	return flag
}

func run(cmd *cobra.Command, o *options) error {
	if o.output != "text" && o.output != "json" {
		return &usageError{fmt.Errorf("-o %s: want text or json", o.output)}
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.timeout)
	defer cancel()
	switch {
	case o.add:
		if o.addr == "" || o.dev == "" {
			return &usageError{fmt.Errorf("%s needs the target address (-a ADDR) and the device on the target (-d /dev/...)", o.flagName("-n"))}
		}
		if o.nbdSocket == "" && (o.noKernelDevice || o.socketMode != "" || o.socketOwner != "") {
			return &usageError{errors.New("--no-kernel-device, --socket-mode and --socket-owner need --nbd-socket PATH")}
		}
		return add(ctx, cmd, o)
	case o.remove:
		if o.dev == "" {
			return &usageError{fmt.Errorf("%s needs the device to remove: -d /dev/rbdiN", o.flagName("-r"))}
		}
		var res map[string]string
		if err := rbdi(o).Do(ctx, "DELETE", "/v1/devices/"+base(o.dev), nil, &res); err != nil {
			return explain(err, "rbdi", o.socket)
		}
		if o.output == "json" {
			return printJSON(cmd.OutOrStdout(), res)
		}
		return nil
	case o.list:
		return list(ctx, cmd, o)
	default:
		if o.dev == "" {
			return &usageError{fmt.Errorf("%s needs the device: -d /dev/rbdiN (or, on a target, the export)", o.flagName("-s"))}
		}
		return showStats(ctx, cmd, o)
	}
}

func rbdi(o *options) *daemon.Client { return daemon.NewClient(o.socket) }
func rbdt(o *options) *daemon.Client { return daemon.NewClient(o.targetSocket) }

func base(dev string) string {
	dev = strings.TrimPrefix(dev, "/dev/")
	return strings.ReplaceAll(dev, "/", "_")
}

// explain turns a control-socket failure into a message with the fix.
func explain(err error, who, path string) error {
	var nr *daemon.NotRunningError
	if errors.As(err, &nr) {
		switch {
		case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
			return fmt.Errorf("%s is not running (nothing at %s): start it with `systemctl start %s`", who, path, who)
		case errors.Is(err, syscall.EACCES):
			return fmt.Errorf("permission denied on %s: run rbdctl as root", path)
		}
		return fmt.Errorf("cannot reach %s at %s: %v", who, path, nr.Err)
	}
	var re *daemon.RemoteError
	if errors.As(err, &re) && re.Hint != "" {
		return fmt.Errorf("%s\n  hint: %s", re.APIError.Error, re.Hint)
	}
	return err
}

// DeviceInfo and TargetStatus are the daemons' answers.
type (
	DeviceInfo   = api.Device
	TargetStatus = api.TargetStatus
)

func add(ctx context.Context, cmd *cobra.Command, o *options) error {
	req := map[string]any{"target": o.addr, "port": o.port, "export": o.dev, "read_only": o.readOnly, "queues": o.queues}
	if o.noReuse {
		req["no_reuse"] = true // only then: an older rbdi refuses unknown fields
	}
	for k, v := range map[string]string{"nbd_socket": o.nbdSocket, "socket_mode": o.socketMode, "socket_owner": o.socketOwner} {
		if v != "" {
			req[k] = v
		}
	}
	if o.noKernelDevice {
		req["no_kernel_device"] = true
	}
	if o.keyFile != "" {
		// rbdi reads the file (the key never travels over the socket), from
		// its own working directory: the path must be absolute
		p, err := filepath.Abs(o.keyFile)
		if err != nil {
			return &usageError{fmt.Errorf("--key-file %s: %v", o.keyFile, err)}
		}
		req["key_file"] = p
	}
	var d DeviceInfo
	if err := rbdi(o).Do(ctx, "POST", "/v1/devices", req, &d); err != nil {
		return explain(err, "rbdi", o.socket)
	}
	if d.Existing { // rbdi had it mapped: that device is the answer
		state := d.State
		if d.Reason != "" {
			state += ": " + d.Reason
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "rbdctl: %s on %s is mapped already, as %s (%s)\n", d.Export, d.TargetAddr, d.Path, state)
	}
	if o.output == "json" {
		return printJSON(cmd.OutOrStdout(), d)
	}
	if d.Path == "" { // on an NBD socket only: rbdiN names it (rbdctl -r -d rbdiN)
		fmt.Fprintln(cmd.OutOrStdout(), d.Name)
		return nil
	}
	fmt.Fprintln(cmd.OutOrStdout(), d.Path)
	return nil
}

// listTimeout bounds each daemon's answer to -l: a stopped or hung daemon
// must not hang the listing of the other.
const listTimeout = 10 * time.Second

func list(ctx context.Context, cmd *cobra.Command, o *options) error {
	var devs []DeviceInfo
	var ts TargetStatus
	var ierr, terr error
	done := make(chan struct{})
	go func() {
		c, cancel := context.WithTimeout(ctx, listTimeout)
		defer cancel()
		ierr = rbdi(o).Do(c, "GET", "/v1/devices", nil, &devs)
		close(done)
	}()
	c, cancel := context.WithTimeout(ctx, listTimeout)
	terr = rbdt(o).Do(c, "GET", "/v1/status", nil, &ts)
	cancel()
	<-done
	var nr *daemon.NotRunningError
	iDown, tDown := errors.As(ierr, &nr), errors.As(terr, &nr)
	w := cmd.OutOrStdout()
	for _, x := range []struct {
		err        error
		down       *bool
		who, where string
	}{{ierr, &iDown, "rbdi", o.socket}, {terr, &tDown, "rbdt", o.targetSocket}} {
		if errors.Is(x.err, context.DeadlineExceeded) {
			fmt.Fprintf(cmd.ErrOrStderr(), "rbdctl: %s at %s did not answer within %v\n", x.who, x.where, listTimeout)
			*x.down = true
		}
	}
	if iDown && tDown && (errors.Is(ierr, context.DeadlineExceeded) || errors.Is(terr, context.DeadlineExceeded)) {
		return errors.New("no daemon answered")
	}
	if iDown && tDown {
		return fmt.Errorf("neither rbdi nor rbdt is running on this host (no %s, no %s): start one with `systemctl start rbdi` or `systemctl start rbdt`", o.socket, o.targetSocket)
	}
	if ierr != nil && !iDown {
		return explain(ierr, "rbdi", o.socket)
	}
	if terr != nil && !tDown {
		return explain(terr, "rbdt", o.targetSocket)
	}
	if o.output == "json" {
		out := map[string]any{}
		if !iDown {
			out["devices"] = devs
		}
		if !tDown {
			out["target"] = ts
		}
		return printJSON(w, out)
	}
	if !iDown {
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		sockets := false // the SOCKET column only when a device has one
		for _, d := range devs {
			sockets = sockets || d.NBDSocket != ""
		}
		if sockets {
			fmt.Fprintln(tw, "DEVICE\tNBD\tTARGET\tEXPORT\tSTATE\tSIZE\tQUEUES\tMODE\tSOCKET")
		} else {
			fmt.Fprintln(tw, "DEVICE\tNBD\tTARGET\tEXPORT\tSTATE\tSIZE\tQUEUES\tMODE")
		}
		for _, d := range devs {
			mode := "rw"
			if d.ReadOnly {
				mode = "ro"
			}
			state := d.State
			if d.Reason != "" {
				state += " (" + d.Reason + ")"
			}
			path, nbdDev := d.Path, d.NBD
			if path == "" { // no kernel device
				path, nbdDev = d.Name, "-"
			}
			if !sockets {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\n", path, nbdDev, d.TargetAddr, d.Export, state, stats.HumanBytes(d.Size), d.Queues, mode)
				continue
			}
			sock := "-"
			if d.NBDSocket != "" {
				sock = fmt.Sprintf("%s (%d %s)", d.NBDSocket, d.SocketClients, plural(d.SocketClients, "client", "clients"))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", path, nbdDev, d.TargetAddr, d.Export, state, stats.HumanBytes(d.Size), d.Queues, mode, sock)
		}
		tw.Flush()
	}
	if !tDown {
		if !iDown {
			fmt.Fprintln(w)
		}
		var addrs []string
		for _, a := range ts.Listen {
			addrs = append(addrs, a.String())
		}
		fmt.Fprintf(w, "target listening on %s\n", strings.Join(addrs, ", "))
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "EXPORT\tMODE\tSESSIONS")
		for _, e := range ts.Exports {
			n := 0
			for _, s := range ts.Sessions {
				if s.Export == e.Name {
					n++
				}
			}
			mode := "rw"
			if e.ReadOnly {
				mode = "ro"
			}
			if e.Shared {
				mode += ",shared"
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\n", e.Name, mode, n)
		}
		tw.Flush()
		if len(ts.Sessions) > 0 {
			tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SESSION\tEXPORT\tINITIATOR\tCONNECTIONS\tMODE\tSINCE")
			for _, s := range ts.Sessions {
				mode := "rw"
				if s.ReadOnly {
					mode = "ro"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d/%d\t%s\t%s\n", s.ID[:12], s.Export, s.Peer, s.Conns, s.Queues, mode, s.Since.Format(time.RFC3339))
			}
			tw.Flush()
		}
	}
	return nil
}

func showStats(ctx context.Context, cmd *cobra.Command, o *options) error {
	w := cmd.OutOrStdout()
	var res struct {
		Device DeviceInfo     `json:"device"`
		Stats  stats.Snapshot `json:"stats"`
	}
	ierr := rbdi(o).Do(ctx, "GET", "/v1/devices/"+base(o.dev)+"/stats", nil, &res)
	if ierr == nil {
		if o.output == "json" {
			return printJSON(w, res)
		}
		if res.Device.Path == "" { // on an NBD socket only
			fmt.Fprintf(w, "%s (NBD socket %s): %s on %s, %s\n", res.Device.Name, res.Device.NBDSocket, res.Device.Export, res.Device.TargetAddr, res.Device.State)
			return res.Stats.WriteText(w)
		}
		fmt.Fprintf(w, "%s (%s): %s on %s, %s\n", res.Device.Path, res.Device.NBD, res.Device.Export, res.Device.TargetAddr, res.Device.State)
		return res.Stats.WriteText(w)
	}
	// not an initiator device: a target export?
	var entries []struct {
		stats.Entry
		Peer string `json:"peer,omitempty"` // a session's initiator
	}
	terr := rbdt(o).Do(ctx, "GET", "/v1/stats?export="+o.dev, nil, &entries)
	if terr == nil {
		if o.output == "json" {
			return printJSON(w, entries)
		}
		for i, e := range entries {
			if i > 0 {
				fmt.Fprintln(w)
			}
			if e.Labels.Session == "" {
				fmt.Fprintf(w, "export %s (all sessions):\n", e.Labels.Export)
			} else {
				fmt.Fprintf(w, "export %s, session %s (initiator %s):\n", e.Labels.Export, e.Labels.Session, e.Peer)
			}
			if err := e.Stats.WriteText(w); err != nil {
				return err
			}
		}
		return nil
	}
	var nr *daemon.NotRunningError
	if errors.As(ierr, &nr) && errors.As(terr, &nr) {
		return explain(ierr, "rbdi", o.socket)
	}
	if !errors.As(ierr, &nr) {
		return explain(ierr, "rbdi", o.socket)
	}
	return explain(terr, "rbdt", o.targetSocket)
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
