import net from "node:net";

/**
 * A TCP relay on 127.0.0.1 in front of a server, whose connections a test cuts as a network
 * fault or a crashed load balancer would: all at once, or one request's answer after the server
 * has acted on it (the answer is lost, the effect is not).
 */
export interface CutProxy {
  readonly port: number;
  /** Destroys every open connection (both sides); how many. */
  cutAll(): number;
  /**
   * Cuts the connection of the next request whose first bytes match, once the server starts to
   * answer it and before the client sees any of the answer; resolves when that happened.
   */
  loseAnswerTo(request: RegExp): Promise<void>;
  close(): Promise<void>;
}

export async function startCutProxy(targetPort: number): Promise<CutProxy> {
  const pairs = new Set<[net.Socket, net.Socket]>();
  let lose: { request: RegExp; done: () => void } | undefined;
  const server = net.createServer((client) => {
    const upstream = net.connect(targetPort, "127.0.0.1");
    const pair: [net.Socket, net.Socket] = [client, upstream];
    pairs.add(pair);
    let doomed = false;
    const end = (): void => {
      pairs.delete(pair);
      client.destroy();
      upstream.destroy();
    };
    client.on("data", (d: Buffer) => {
      if (lose !== undefined && !doomed && lose.request.test(d.subarray(0, 200).toString("latin1"))) doomed = true;
      upstream.write(d);
    });
    upstream.on("data", (d: Buffer) => {
      if (doomed && lose !== undefined) {
        const done = lose.done;
        lose = undefined;
        end();
        done();
        return;
      }
      client.write(d);
    });
    client.on("error", end).on("close", end);
    upstream.on("error", end).on("close", end);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    cutAll: () => {
      const n = pairs.size;
      for (const [a, b] of [...pairs]) {
        a.destroy();
        b.destroy();
      }
      pairs.clear();
      return n;
    },
    loseAnswerTo: (request) => new Promise<void>((resolve) => (lose = { request, done: resolve })),
    close: async () => {
      for (const [a, b] of pairs) {
        a.destroy();
        b.destroy();
      }
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
