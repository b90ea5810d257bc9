import { availableParallelism } from "node:os";
import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    pool: "forks",
    // Two test files at a time even on two cores (vitest's default there is one): a file waits
    // for its CLI runs, servers and disk much of the time, and the other uses it. The suite took
    // 1,378 s on one, 938 s on two (README, Development).
    maxWorkers: Math.max(2, availableParallelism()),
    globalSetup: ["test/global-setup.ts"],
    // The AWS SDK's notice that its later versions need Node.js 22 (the pinned one supports 20).
    env: { AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED: "true" },
  },
});
