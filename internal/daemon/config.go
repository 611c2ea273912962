package daemon

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/pelletier/go-toml/v2"
)

// ParseFile opens the file at path and hands it to parse, with path for
// its errors (a configuration file's loader and its fuzz target share parse).
func ParseFile[T any](path string, parse func(r io.Reader, path string) (T, error)) (T, error) {
	f, err := os.Open(path)
	if err != nil {
		var zero T
		return zero, err
	}
	defer f.Close()
	return parse(f, path)
}

// DecodeTOML decodes TOML from r into v, refusing keys v does not have;
// errors name path, line and column.
func DecodeTOML(r io.Reader, path string, v any) error {
	if err := toml.NewDecoder(r).DisallowUnknownFields().Decode(v); err != nil {
		var de *toml.DecodeError
		if errors.As(err, &de) {
			row, col := de.Position()
			return fmt.Errorf("%s:%d:%d: %v", path, row, col, de)
		}
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			return fmt.Errorf("%s: %s", path, sm.String())
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}
