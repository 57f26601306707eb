package httpapi

// authRoutes serves tokens, policies and logins.
func (h *Handler) authRoutes() {}
