package initiator

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"testing"
)

// FuzzStateFile: whatever a state file holds (a torn write, another
// version, a hand edit), decoding it neither panics nor passes it unchecked: a file that loads without an error passes check and names
// the device its file name says.
func FuzzStateFile(f *testing.F) {
	good, _ := json.Marshal(&deviceState{Version: stateVersion, Num: 0, Kernel: true, Index: 3, Backend: "rbd:10.0.0.1:65000:/dev/ram0",
		Request: AddRequest{Target: "10.0.0.1", Export: "/dev/ram0"}, TargetAddr: "10.0.0.1:65000",
		Session: "00112233445566778899aabbccddeeff", Queues: 2})
	f.Add(good)
	f.Add([]byte(`{"version":1,"num":7}`))
	f.Add([]byte(`{"version":2}`))
	f.Add(good[:len(good)/2])
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &stateStore{dir: "/var/lib/rbd"}
		st, err := s.decode(data, s.path(0))
		if err != nil {
			return
		}
		if err := st.check(); err != nil || st.Num != 0 {
			t.Fatalf("loaded a state file that is not valid for rbdi0: num %d, check %v", st.Num, err)
		}
		if _, err := st.session(); err != nil {
			t.Fatalf("loaded a state file with a bad session: %v", err)
		}
	})
}

// FuzzAddRequest: a device request as the control socket decodes it (JSON,
// unknown fields refused), then the checks of its NBD socket options,
// which run before anything is connected: no panic, and an accepted socket
// path is absolute, clean and fits a Unix socket address.
func FuzzAddRequest(f *testing.F) {
	f.Add([]byte(`{"target":"10.0.0.1","port":65000,"export":"/dev/ram0","queues":2}`))
	f.Add([]byte(`{"target":"t","export":"/dev/x","nbd_socket":"/run/rbd/vm1.sock","no_kernel_device":true,"socket_mode":"0660","socket_owner":"root:root"}`))
	f.Add([]byte(`{"target":"t","export":"e","nbd_socket":"rel.sock"}`))
	f.Add([]byte(`{"target":"t","export":"e","socket_mode":"999"}`))
	f.Add([]byte(`{"target":"t","export":"e","nbd_socket":"/s","socket_owner":"0:"}`))
	f.Add([]byte(`{"bogus":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		var req AddRequest
		if dec.Decode(&req) != nil {
			return
		}
		sc, err := parseSocketConfig(req)
		if err != nil || req.NBDSocket == "" {
			return
		}
		if !filepath.IsAbs(sc.path) || filepath.Clean(sc.path) != sc.path || len(sc.path) > sunPathMax-12 {
			t.Fatalf("accepted socket path %q", sc.path)
		}
		if sc.mode&^0o777 != 0 {
			t.Fatalf("accepted socket mode %o", sc.mode)
		}
	})
}
