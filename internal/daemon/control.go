package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// ListenControl opens the control socket at path, root-only (mode 0600 in a
// 0755 folder). A stale socket left by a crashed daemon is replaced; a live
// one (another daemon answering) is an error.
func ListenControl(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another daemon is running", path)
	}
	os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

// ServeControl serves h on ln until ctx ends.
func ServeControl(ctx context.Context, ln net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(sctx)
	}()
	err := srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// APIError is the body of a failed control request.
type APIError struct {
	Error string `json:"error"`
	// Hint says what to do about it, when there is something to do.
	Hint string `json:"hint,omitempty"`
}

// WriteJSON writes v as the response.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v)
}

// WriteError writes an APIError.
func WriteError(w http.ResponseWriter, status int, err error, hint string) {
	WriteJSON(w, status, APIError{Error: err.Error(), Hint: hint})
}

// Client talks to a daemon's control socket.
type Client struct {
	Path string
	http *http.Client
}

// NewClient returns a client of the control socket at path.
func NewClient(path string) *Client {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", path)
	}}
	return &Client{Path: path, http: &http.Client{Transport: tr}}
}

// NotRunningError means nothing answers on the control socket.
type NotRunningError struct {
	Path string
	Err  error
}

func (e *NotRunningError) Error() string {
	return fmt.Sprintf("cannot reach the daemon at %s: %v", e.Path, e.Err)
}
func (e *NotRunningError) Unwrap() error { return e.Err }

// Do sends a request with an optional JSON body and decodes the JSON answer
// into out. A daemon's error answer comes back as *RemoteError.
func (c *Client) Do(ctx context.Context, method, path string, in, out any) error {
	var body *bytesReader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return err
		}
		body = &bytesReader{b: b}
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://rbd"+path, body.reader())
	if err != nil {
		return err
	}
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := c.http.Do(req)
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) && op.Op == "dial" {
			return &NotRunningError{Path: c.Path, Err: op.Err}
		}
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		var ae APIError
		if err := json.NewDecoder(resp.Body).Decode(&ae); err != nil || ae.Error == "" {
			return &RemoteError{Status: resp.StatusCode, APIError: APIError{Error: resp.Status}}
		}
		return &RemoteError{Status: resp.StatusCode, APIError: ae}
	}
	if out == nil {
		return nil
	}
	return json.NewDecoder(resp.Body).Decode(out)
}

// RemoteError is an error the daemon answered with.
type RemoteError struct {
	Status int
	APIError
}

func (e *RemoteError) Error() string { return e.APIError.Error }
