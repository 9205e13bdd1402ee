import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

// The build lands where the Go binary embeds it (internal/ui).
export default defineConfig({
  plugins: [react()],
  build: {
    outDir: "../internal/ui/static/app",
    emptyOutDir: true,
    sourcemap: false,
    reportCompressedSize: true,
  },
});
