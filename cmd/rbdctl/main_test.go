package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"rbd/internal/daemon"
)

// fakeDaemon serves h on a Unix socket, as rbdi or rbdt would.
func fakeDaemon(t *testing.T, h http.Handler) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "d.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func rbdctl(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	cmd := newRootCmd(&out)
	cmd.SetArgs(args)
	cmd.SetErr(&bytes.Buffer{})
	err := cmd.Execute()
	return out.String(), err
}

// run runs rbdctl as main does and returns its exit code and output.
func runMain(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errw bytes.Buffer
	code = execute(args, &out, &errw)
	return code, out.String(), errw.String()
}

// TestExitCodes: 2 for every usage error, whether rbdctl or cobra finds it
// (and then nothing is asked of a daemon), 1 for a failed action.
func TestExitCodes(t *testing.T) {
	none := filepath.Join(t.TempDir(), "none.sock")
	down := []string{"--socket", none, "--target-socket", none}
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-n", "-d", "/dev/ram0"}, 2, "-n needs the target address"},
		{[]string{"-n", "-a", "10.0.0.1"}, 2, "-n needs the target address"},
		{[]string{"-r"}, 2, "-r needs the device"},
		{[]string{"-s"}, 2, "-s needs the device"},
		{[]string{"-l", "-o", "yaml"}, 2, "want text or json"},
		{[]string{}, 2, "at least one of the flags"},
		{[]string{"-l", "-r", "-d", "x"}, 2, "none of the others"},
		{[]string{"--bogus", "-l"}, 2, "unknown flag: --bogus"},
		{[]string{"-x"}, 2, "unknown shorthand flag: 'x'"},
		{[]string{"-n", "-a", "h", "-d", "/dev/ram0", "-p", "70000"}, 2, `invalid argument "70000"`},
		{[]string{"-l", "--timeout", "soon"}, 2, `invalid argument "soon"`},
		{[]string{"frobnicate"}, 2, `unknown command "frobnicate"`},
		{[]string{"-l", "extra"}, 2, `unknown command "extra"`},
		{[]string{"map", "-d", "/dev/ram0"}, 2, "map needs the target address"},
		{[]string{"unmap"}, 2, "unmap needs the device to remove"},
		{[]string{"stats"}, 2, "stats needs the device"},
		{[]string{"unmap", "/dev/rbdi0"}, 2, "takes no operands"},
		{[]string{"list", "-n"}, 2, "unknown shorthand flag: 'n'"},
		{[]string{"completion"}, 2, "accepts 1 arg"},
		{[]string{"completion", "tcsh"}, 2, `invalid argument "tcsh"`},
		{append(down, "-n", "-a", "10.0.0.1", "-d", "/dev/ram0"), 1, "rbdi is not running"},
		{append(down, "map", "-a", "10.0.0.1", "-d", "/dev/ram0"), 1, "rbdi is not running"},
		{append(down, "-l"), 1, "neither rbdi nor rbdt is running"},
		{append(down, "list"), 1, "neither rbdi nor rbdt is running"},
		{append(down, "-r", "-d", "/dev/rbdi0"), 1, "rbdi is not running"},
		{append(down, "stats", "-d", "/dev/rbdi0"), 1, "rbdi is not running"},
		{[]string{"--version"}, 0, ""},
	} {
		code, _, serr := runMain(t, tc.args...)
		if code != tc.code || !strings.Contains(serr, tc.want) || (tc.code != 0 && !strings.HasPrefix(serr, "rbdctl: ")) {
			t.Errorf("rbdctl %q: want exit %d and %q, got %d %q", tc.args, tc.code, tc.want, code, serr)
		}
	}
}

func TestVersion(t *testing.T) {
	code, out, _ := runMain(t, "--version")
	if code != 0 || !regexp.MustCompile(`^rbdctl \S+ \(go1\.\d+[^)]*\)\n$`).MatchString(out) {
		t.Fatalf("--version: %d %q", code, out)
	}
}

func TestAddAndErrors(t *testing.T) {
	var got map[string]any
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		json.NewDecoder(r.Body).Decode(&got)
		if got["export"] == "/dev/busy" {
			daemon.WriteError(w, http.StatusBadRequest, errors.New("export /dev/busy on 10.0.0.1:65000 is busy"), "remove it from the other initiator first")
			return
		}
		daemon.WriteJSON(w, http.StatusOK, DeviceInfo{Name: "rbdi3", Path: "/dev/rbdi3", NBD: "/dev/nbd5"})
	})
	mux.HandleFunc("DELETE /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("name") != "rbdi3" {
			daemon.WriteError(w, http.StatusBadRequest, errors.New("/dev/rbdi3 is in use: mounted on /mnt"), "unmount it (or stop what holds it) first")
			return
		}
		daemon.WriteJSON(w, http.StatusOK, map[string]string{"removed": "rbdi3"})
	})
	sock := fakeDaemon(t, mux)
	out, err := rbdctl(t, "--socket", sock, "-n", "-a", "10.0.0.1", "-p", "7000", "-d", "/dev/ram0", "-q", "2")
	if err != nil || out != "/dev/rbdi3\n" {
		t.Fatalf("-n: %q %v", out, err)
	}
	if got["target"] != "10.0.0.1" || got["port"] != float64(7000) || got["export"] != "/dev/ram0" || got["queues"] != float64(2) {
		t.Fatalf("request sent: %v", got)
	}
	_, err = rbdctl(t, "--socket", sock, "-n", "-a", "10.0.0.1", "-d", "/dev/busy")
	if err == nil || !strings.Contains(err.Error(), "is busy") || !strings.Contains(err.Error(), "hint: remove it") {
		t.Fatalf("refused add: %v", err)
	}
	if _, err := rbdctl(t, "--socket", sock, "-r", "-d", "/dev/rbdi3"); err != nil {
		t.Fatalf("-r: %v", err)
	}
	if _, err := rbdctl(t, "--socket", sock, "-r", "-d", "/dev/rbdi9"); err == nil || !strings.Contains(err.Error(), "mounted on /mnt") {
		t.Fatalf("-r of a mounted device: %v", err)
	}
}

func TestList(t *testing.T) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		daemon.WriteJSON(w, http.StatusOK, []DeviceInfo{{Path: "/dev/rbdi0", NBD: "/dev/nbd0", TargetAddr: "10.0.0.1:65000",
			Export: "/dev/ram0", State: "connected", Size: 1 << 30, Queues: 2}})
	})
	isock := fakeDaemon(t, mux)
	none := filepath.Join(t.TempDir(), "none.sock")
	out, err := rbdctl(t, "--socket", isock, "--target-socket", none, "-l")
	if err != nil || !strings.Contains(out, "/dev/rbdi0") || !strings.Contains(out, "1.0 GiB") || strings.Contains(out, "target listening") {
		t.Fatalf("-l on an initiator: %v\n%s", err, out)
	}
	out, err = rbdctl(t, "--socket", isock, "--target-socket", none, "-l", "-o", "json")
	var v struct{ Devices []DeviceInfo }
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || len(v.Devices) != 1 || v.Devices[0].Export != "/dev/ram0" {
		t.Fatalf("-l -o json: %v\n%s", err, out)
	}
}

// TestVerbs: map, unmap, list and stats send the daemons exactly what -n,
// -r, -l and -s send, and print the same.
func TestVerbs(t *testing.T) {
	var mu sync.Mutex
	var reqs []string
	mux := http.NewServeMux()
	record := func(r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		reqs = append(reqs, r.Method+" "+r.URL.String()+" "+string(b))
		mu.Unlock()
	}
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		daemon.WriteJSON(w, http.StatusOK, DeviceInfo{Name: "rbdi3", Path: "/dev/rbdi3", NBD: "/dev/nbd5"})
	})
	mux.HandleFunc("DELETE /v1/devices/{name}", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		daemon.WriteJSON(w, http.StatusOK, map[string]string{"removed": r.PathValue("name")})
	})
	mux.HandleFunc("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		daemon.WriteJSON(w, http.StatusOK, []DeviceInfo{{Path: "/dev/rbdi0", NBD: "/dev/nbd0", State: "connected", Size: 1 << 30}})
	})
	mux.HandleFunc("GET /v1/devices/{name}/stats", func(w http.ResponseWriter, r *http.Request) {
		record(r)
		daemon.WriteJSON(w, http.StatusOK, map[string]any{"device": DeviceInfo{Path: "/dev/rbdi0", NBD: "/dev/nbd0"}})
	})
	sock := fakeDaemon(t, mux)
	none := filepath.Join(t.TempDir(), "none.sock")
	common := []string{"--socket", sock, "--target-socket", none}
	for _, tc := range []struct {
		flags, verb []string
	}{
		{[]string{"-n", "-a", "10.0.0.1", "-p", "7000", "-d", "/dev/ram0", "-q", "2", "--read-only"},
			[]string{"map", "-a", "10.0.0.1", "-p", "7000", "-d", "/dev/ram0", "-q", "2", "--read-only"}},
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram0", "--no-reuse", "-o", "json"},
			[]string{"map", "-a", "10.0.0.1", "-d", "/dev/ram0", "--no-reuse", "-o", "json"}},
		{[]string{"-r", "-d", "/dev/rbdi3"}, []string{"unmap", "-d", "/dev/rbdi3"}},
		{[]string{"-r", "-d", "/dev/rbdi3", "-o", "json"}, []string{"unmap", "-o", "json", "-d", "/dev/rbdi3"}},
		{[]string{"-l"}, []string{"list"}},
		{[]string{"-l", "-o", "json"}, []string{"list", "-o", "json"}},
		{[]string{"-s", "-d", "/dev/rbdi0"}, []string{"stats", "-d", "/dev/rbdi0"}},
	} {
		var outs [2]string
		var sent [2][]string
		for i, args := range [][]string{tc.flags, tc.verb} {
			mu.Lock()
			reqs = nil
			mu.Unlock()
			code, out, serr := runMain(t, append(common, args...)...)
			if code != 0 {
				t.Fatalf("rbdctl %q: exit %d: %s", args, code, serr)
			}
			outs[i] = out
			mu.Lock()
			sent[i] = reqs
			mu.Unlock()
		}
		if outs[0] != outs[1] || strings.Join(sent[0], "\n") != strings.Join(sent[1], "\n") || len(sent[0]) == 0 {
			t.Errorf("%q and %q differ:\n%q %q\n%q %q", tc.flags, tc.verb, outs[0], sent[0], outs[1], sent[1])
		}
	}
}

// TestReuse: an export this host has mapped already prints that device
// (exit 0, a note on stderr); --no-reuse asks rbdi to refuse, and the
// refusal names the device (exit 1). Without --no-reuse the request does
// not carry the field, which an older rbdi would refuse.
func TestReuse(t *testing.T) {
	var got map[string]any
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		got = nil
		json.NewDecoder(r.Body).Decode(&got)
		if got["no_reuse"] == true {
			daemon.WriteError(w, http.StatusBadRequest, errors.New("export /dev/ram0 on 10.0.0.1:65000 is mapped already as /dev/rbdi2"),
				"use /dev/rbdi2, or remove it first: rbdctl -r -d /dev/rbdi2")
			return
		}
		daemon.WriteJSON(w, http.StatusOK, DeviceInfo{Name: "rbdi2", Path: "/dev/rbdi2", NBD: "/dev/nbd2", TargetAddr: "10.0.0.1:65000",
			Export: "/dev/ram0", State: "connected", Existing: true})
	})
	sock := fakeDaemon(t, mux)
	for _, tc := range []struct {
		args           []string
		code           int
		stdout, stderr string
		noReuseSent    bool
	}{
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram0"}, 0, "/dev/rbdi2\n", "/dev/ram0 on 10.0.0.1:65000 is mapped already, as /dev/rbdi2 (connected)", false},
		{[]string{"map", "-a", "10.0.0.1", "-d", "/dev/ram0"}, 0, "/dev/rbdi2\n", "is mapped already, as /dev/rbdi2", false},
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram0", "-o", "json"}, 0, `"existing": true`, "is mapped already, as /dev/rbdi2", false},
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram0", "--no-reuse"}, 1, "", "mapped already as /dev/rbdi2\n  hint: use /dev/rbdi2, or remove it first", true},
		{[]string{"map", "--no-reuse", "-a", "10.0.0.1", "-d", "/dev/ram0"}, 1, "", "mapped already as /dev/rbdi2", true},
	} {
		code, out, serr := runMain(t, append([]string{"--socket", sock}, tc.args...)...)
		_, sentNoReuse := got["no_reuse"]
		if code != tc.code || !strings.Contains(out, tc.stdout) || (tc.stdout == "" && out != "") || !strings.Contains(serr, tc.stderr) || sentNoReuse != tc.noReuseSent {
			t.Errorf("rbdctl %q: want %d %q %q (no_reuse sent %v), got %d %q %q (%v)", tc.args, tc.code, tc.stdout, tc.stderr, tc.noReuseSent, code, out, serr, got)
		}
	}
}

// TestKeyFile: --key-file travels as an absolute path (rbdi reads the file
// itself), and only when given.
func TestKeyFile(t *testing.T) {
	var got map[string]any
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		got = nil
		json.NewDecoder(r.Body).Decode(&got)
		daemon.WriteJSON(w, http.StatusOK, DeviceInfo{Name: "rbdi0", Path: "/dev/rbdi0"})
	})
	sock := fakeDaemon(t, mux)
	wd, _ := os.Getwd()
	for _, tc := range []struct {
		args []string
		want any // the key_file sent; nil: none
	}{
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/vg0/db", "--key-file", "/etc/rbd/keys/db.key"}, "/etc/rbd/keys/db.key"},
		{[]string{"map", "-a", "10.0.0.1", "-d", "/dev/vg0/db", "--key-file", "db.key"}, filepath.Join(wd, "db.key")},
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/vg0/db"}, nil},
	} {
		code, _, serr := runMain(t, append([]string{"--socket", sock}, tc.args...)...)
		if code != 0 || got["key_file"] != tc.want {
			t.Errorf("rbdctl %q: exit %d %q, sent key_file %v, want %v", tc.args, code, serr, got["key_file"], tc.want)
		}
	}
}

// TestCompletion: the scripts are cobra's, for rbdctl, with the verbs.
func TestCompletion(t *testing.T) {
	for _, tc := range []struct{ shell, mark string }{
		{"bash", "complete -o default -F __start_rbdctl rbdctl"},
		{"zsh", "#compdef rbdctl"},
		{"fish", "complete -c rbdctl "},
	} {
		code, out, serr := runMain(t, "completion", tc.shell)
		if code != 0 || !strings.Contains(out, tc.mark) {
			t.Errorf("completion %s: %d %s\n%.200s", tc.shell, code, serr, out)
		}
	}
	// what the scripts ask rbdctl at completion time
	code, out, _ := runMain(t, "__complete", "")
	for _, w := range []string{"map\t", "unmap\t", "list\t", "stats\t", "completion\t"} {
		if code != 0 || !strings.Contains(out, w) {
			t.Errorf("__complete: no %q in\n%s", w, out)
		}
	}
	code, out, _ = runMain(t, "__complete", "-o", "")
	if code != 0 || !strings.HasPrefix(out, "text\njson\n") {
		t.Errorf("__complete -o: %d\n%s", code, out)
	}
}

// TestNBDSocket: --nbd-socket and its options reach rbdi (and only when
// given); a device on a socket only prints its name, and -l shows the
// socket with its clients.
func TestNBDSocket(t *testing.T) {
	var got map[string]any
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		got = nil
		json.NewDecoder(r.Body).Decode(&got)
		info := DeviceInfo{Name: "rbdi1", Path: "/dev/rbdi1", NBD: "/dev/nbd1"}
		if got["no_kernel_device"] == true {
			info.Path, info.NBD = "", ""
		}
		daemon.WriteJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("GET /v1/devices", func(w http.ResponseWriter, r *http.Request) {
		daemon.WriteJSON(w, http.StatusOK, []DeviceInfo{
			{Name: "rbdi0", Path: "/dev/rbdi0", NBD: "/dev/nbd0", Export: "/dev/ram0", State: "connected"},
			{Name: "rbdi1", Export: "/dev/ram1", State: "connected", NBDSocket: "/run/rbd/vm1.sock", SocketClients: 2},
		})
	})
	sock := fakeDaemon(t, mux)
	none := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args []string
		out  string
		want map[string]any // fields sent; nil value: must be absent
	}{
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram1"}, "/dev/rbdi1\n",
			map[string]any{"nbd_socket": nil, "no_kernel_device": nil, "socket_mode": nil, "socket_owner": nil}},
		{[]string{"-n", "-a", "10.0.0.1", "-d", "/dev/ram1", "--nbd-socket", "/run/rbd/vm1.sock"}, "/dev/rbdi1\n",
			map[string]any{"nbd_socket": "/run/rbd/vm1.sock", "no_kernel_device": nil}},
		{[]string{"map", "-a", "10.0.0.1", "-d", "/dev/ram1", "--nbd-socket", "/run/rbd/vm1.sock", "--no-kernel-device", "--socket-mode", "0660", "--socket-owner", "root:kvm"}, "rbdi1\n",
			map[string]any{"nbd_socket": "/run/rbd/vm1.sock", "no_kernel_device": true, "socket_mode": "0660", "socket_owner": "root:kvm"}},
	} {
		out, err := rbdctl(t, append([]string{"--socket", sock}, tc.args...)...)
		if err != nil || out != tc.out {
			t.Fatalf("%q: %q %v, want %q", tc.args, out, err, tc.out)
		}
		for k, v := range tc.want {
			if gv, ok := got[k]; v == nil && ok || v != nil && gv != v {
				t.Errorf("%q: sent %s = %v (present %v), want %v", tc.args, k, gv, ok, v)
			}
		}
	}
	if code, _, serr := runMain(t, "--socket", sock, "-n", "-a", "10.0.0.1", "-d", "/dev/ram1", "--no-kernel-device"); code != 2 || !strings.Contains(serr, "need --nbd-socket") {
		t.Fatalf("--no-kernel-device alone: exit %d, %q", code, serr)
	}
	out, err := rbdctl(t, "--socket", sock, "--target-socket", none, "-l")
	if err != nil || !strings.Contains(out, "SOCKET") || !strings.Contains(out, "/run/rbd/vm1.sock (2 clients)") ||
		!regexp.MustCompile(`(?m)^rbdi1\s+-\s`).MatchString(out) {
		t.Fatalf("-l with an NBD socket: %v\n%s", err, out)
	}
}
