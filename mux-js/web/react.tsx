// The React binding in a development build under StrictMode, which mounts, unmounts and
// mounts every effect: one WebSocket and one session per hook all the same.
import { StrictMode, useEffect, useState } from "react";
import { createRoot } from "react-dom/client";
import { MuxProvider, useSession, useTopic } from "../src/react/index.js";

const config = (await (await fetch("/config.json")).json()) as { mux: string };
const user = new URLSearchParams(location.search).get("user") ?? "react";

function Chat() {
  const session = useSession("chat/general");
  const [open, setOpen] = useState(false);
  useEffect(() => {
    if (!session) return;
    const on = () => setOpen(true);
    if (session.current?.state === "open") on();
    session.addEventListener("open", on);
    return () => session.removeEventListener("open", on);
  }, [session]);
  return <p>chat/general: <b id="chat-state">{open ? "open" : "opening"}</b></p>;
}

function Members() {
  const { last, members } = useTopic("presence");
  // The first event of a presence subscription is the snapshot of the others present.
  return (
    <p>presence: <b id="presence-state">{last ? "subscribed" : "subscribing"}</b>;
      others present: <b id="members">{[...members].sort().join(", ")}</b></p>
  );
}

function App() {
  const [mounted, setMounted] = useState(true);
  return (
    <>
      <button id="toggle" onClick={() => setMounted(!mounted)}>{mounted ? "unmount" : "mount"}</button>
      {mounted && (
        <MuxProvider url={config.mux} options={{ token: user }}>
          <Chat />
          <Members />
        </MuxProvider>
      )}
    </>
  );
}

createRoot(document.getElementById("root") as HTMLElement).render(<StrictMode><App /></StrictMode>);
