import preact from "@preact/preset-vite";
import { defineConfig } from "vite";

// The build goes into the Python package: the gateway serves it at /, so no user needs Node.js.
// No inline script and no eval anywhere, so the page runs under a strict Content-Security-Policy.
export default defineConfig({
  plugins: [preact()],
  base: "/",
  build: {
    outDir: "../services/gateway/ui",
    emptyOutDir: true,
    assetsDir: "assets",
    sourcemap: false,
    modulePreload: { polyfill: false },
    // The same source always builds the same files (CI compares them with the committed build).
    rollupOptions: { output: { entryFileNames: "assets/app.js", chunkFileNames: "assets/[name].js", assetFileNames: "assets/[name][extname]" } },
  },
});
