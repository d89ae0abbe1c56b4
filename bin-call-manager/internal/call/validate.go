package call

import "fmt"

// InvalidError is a request field the call manager refuses.
type InvalidError struct {
	Field       string
	Description string
}

func (e *InvalidError) Error() string { return e.Field + ": " + e.Description }

func invalid(field, format string, args ...any) *InvalidError {
	return &InvalidError{Field: field, Description: fmt.Sprintf(format, args...)}
}
