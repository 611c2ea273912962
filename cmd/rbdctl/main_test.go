package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"path/filepath"
	"strings"
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

func TestUsage(t *testing.T) {
	none := filepath.Join(t.TempDir(), "none.sock")
	for _, tc := range []struct {
		args  []string
		want  string
		usage bool
	}{
		{[]string{"-n", "-d", "/dev/ram0"}, "-n needs the target address", true},
		{[]string{"-n", "-a", "10.0.0.1"}, "-n needs the target address", true},
		{[]string{"-r"}, "-r needs the device", true},
		{[]string{"-s"}, "-s needs the device", true},
		{[]string{"-l", "-o", "yaml"}, "want text or json", true},
		{[]string{}, "at least one of the flags", false},
		{[]string{"-l", "-r", "-d", "x"}, "none of the others", false},
		{[]string{"--socket", none, "-n", "-a", "10.0.0.1", "-d", "/dev/ram0"}, "rbdi is not running", false},
		{[]string{"--socket", none, "--target-socket", none, "-l"}, "neither rbdi nor rbdt is running", false},
	} {
		_, err := rbdctl(t, tc.args...)
		var ue *usageError
		if err == nil || !strings.Contains(err.Error(), tc.want) || (tc.usage && !errors.As(err, &ue)) {
			t.Errorf("rbdctl %v: want %q (usage %v), got %v", tc.args, tc.want, tc.usage, err)
		}
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
