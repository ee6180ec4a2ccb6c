// The browser half of so3krates.viz.MoleculeViewer (a Panel JSComponent).
//
// Python sends the structure once as an MDL molfile (element, position and bond of every
// atom: NGL then draws exactly the bonds computed in Python, never guesses its own) and then
// only float32 positions (a Bokeh ndarray: binary over the websocket, a Float32Array here),
// which move the atoms of the loaded structure in place: no reload, no new scene, camera kept.
// After each drawn update its version number goes back to Python (`drawn_version`), so the
// sender can pace itself on what the browser has actually shown. Atoms are coloured by element,
// or by one colour each (`atom_colors`, 0xRRGGBB per atom, e.g. a committee's uncertainty) with a
// legend line (`legend`) in the corner.
import * as NGL from "ngl"

const STYLE = `
.so3k-viewer { position: relative; width: 100%; height: 100%; min-height: 120px; }
.so3k-stage { position: absolute; inset: 0; }
.so3k-bar { position: absolute; top: 6px; right: 6px; display: flex; gap: 6px; z-index: 2; }
.so3k-bar button { font: 12px sans-serif; padding: 2px 8px; cursor: pointer; border: 1px solid #aaa;
  border-radius: 4px; background: rgba(255,255,255,0.85); }
.so3k-label { position: absolute; left: 8px; bottom: 6px; z-index: 2; font: 12px monospace;
  color: #333; background: rgba(255,255,255,0.7); padding: 1px 4px; border-radius: 3px;
  pointer-events: none; }
.so3k-legend { position: absolute; left: 8px; top: 6px; z-index: 2; font: 12px sans-serif;
  color: #333; background: rgba(255,255,255,0.8); padding: 1px 4px; border-radius: 3px;
  pointer-events: none; }
`

// NGL's MouseObserver listens on `document` and acts only on events whose target is its canvas.
// Inside Bokeh's shadow DOM the browser retargets document-level events to the shadow host, so
// NGL would ignore every press and wheel: mouse rotation and zoom would be dead. Re-register its
// handlers with the event's original target (composedPath()[0]) presented as `target`.
const MOUSE_EVENTS = {
  mousewheel: "_onMousewheel", wheel: "_onMousewheel", MozMousePixelScroll: "_onMousewheel",
  mousemove: "_onMousemove", mousedown: "_onMousedown", mouseup: "_onMouseup",
  contextmenu: "_onContextmenu", touchstart: "_onTouchstart", touchend: "_onTouchend",
  touchmove: "_onTouchmove",
}

function listenThroughShadowDom(observer) {
  const canvas = observer.domElement
  const options = { passive: false }
  const wrappers = []
  for (const [type, name] of Object.entries(MOUSE_EVENTS)) {
    const handler = observer[name]
    if (typeof handler !== "function") continue
    document.removeEventListener(type, handler, options)
    const wrapper = (event) => {
      if (event.target === canvas || event.composedPath()[0] !== canvas) return handler(event)
      handler(new Proxy(event, {
        get(target, key) {
          if (key === "target") return canvas
          const value = Reflect.get(target, key)
          return typeof value === "function" ? value.bind(target) : value
        },
      }))
    }
    document.addEventListener(type, wrapper, options)
    wrappers.push([type, wrapper])
  }
  return () => wrappers.forEach(([type, wrapper]) => document.removeEventListener(type, wrapper, options))
}

export function render({ model, el }) {
  const style = document.createElement("style")
  style.textContent = STYLE
  const root = document.createElement("div")
  root.className = "so3k-viewer"
  const host = document.createElement("div")
  host.className = "so3k-stage"
  const bar = document.createElement("div")
  bar.className = "so3k-bar"
  const reset = document.createElement("button")
  reset.textContent = "Reset view"
  reset.title = "Centre the molecule and restore the starting orientation"
  bar.appendChild(reset)
  const label = document.createElement("div")
  label.className = "so3k-label"
  const legend = document.createElement("div")
  legend.className = "so3k-legend"
  root.append(host, bar, label, legend)
  el.append(style, root)

  // clipDist 0: NGL otherwise adds 10 Å to the camera distance of autoView, which leaves a small
  // molecule tiny in the middle (the near plane still stays at 0.1 Å or more)
  const stage = new NGL.Stage(host, { backgroundColor: model.background, tooltip: false, clipDist: 0 })
  const stopListening = listenThroughShadowDom(stage.mouseObserver)
  let component = null // the loaded StructureComponent
  let generation = 0 // bumped by each new structure, so a stale load is dropped
  let homeOrientation = null
  // one colour per atom, read by this viewer's own colour scheme (NGL keeps schemes by id)
  let atomColors = []
  const perAtomScheme = NGL.ColormakerRegistry.addScheme(function () {
    this.atomColor = (atom) => atomColors[atom.index] ?? 0x808080
  }, "so3k-per-atom")
  let coloured = false // the representation uses perAtomScheme (else the element colours)

  function showFrame() {
    const frame = model.frame
    label.textContent = frame === null || frame === undefined || frame < 0 ? "" : `frame ${frame}`
    label.style.display = label.textContent ? "" : "none"
  }

  function whenDrawn(version) {
    // NGL draws on the next animation frame; report once the canvas holds the new positions
    stage.viewer.signals.rendered.addOnce(() => {
      root.dataset.drawnVersion = String(version)
      model.drawn_version = version
    })
    stage.viewer.requestRender()
  }

  function applyPositions() {
    const positions = model.positions
    if (component === null || positions === null || positions === undefined) return
    const structure = component.structure
    if (positions.length !== 3 * structure.atomCount) {
      console.warn(`so3krates viewer: ${positions.length / 3} positions for ${structure.atomCount} atoms; ignored`)
      return
    }
    structure.updatePosition(positions)
    component.updateRepresentations({ position: true })
    whenDrawn(model.version)
  }

  function showLegend() {
    legend.textContent = model.legend || ""
    legend.style.display = legend.textContent ? "" : "none"
  }

  function applyColors() {
    showLegend()
    if (component === null) return
    const colors = model.atom_colors
    const wanted = colors !== null && colors !== undefined && colors.length === component.structure.atomCount
    if (colors && colors.length && !wanted) {
      console.warn(`so3krates viewer: ${colors.length} colours for ${component.structure.atomCount} atoms; ignored`)
    }
    if (!wanted && !coloured) return
    atomColors = wanted ? Array.from(colors) : []
    coloured = wanted
    component.reprList.forEach((repr) => repr.setColor(wanted ? perAtomScheme : "element"))
    root.dataset.coloured = wanted ? "atoms" : "element"
    whenDrawn(model.version)
  }

  function resetView() {
    if (component === null) return
    if (homeOrientation !== null) stage.viewerControls.orient(homeOrientation)
    component.autoView(0)
  }

  async function loadStructure() {
    const mine = ++generation
    stage.removeAllComponents()
    component = null
    root.dataset.atoms = root.dataset.bonds = "0"
    if (!model.molfile) {
      stage.viewer.requestRender()
      return
    }
    const blob = new Blob([model.molfile], { type: "text/plain" })
    const loaded = await stage.loadFile(blob, { ext: "sdf", name: "molecule", defaultRepresentation: false })
    if (mine !== generation) return // a newer structure arrived while this one was parsed
    loaded.addRepresentation("ball+stick", {
      colorScheme: "element",
      multipleBond: "off",
    })
    component = loaded
    // what NGL actually built, for tests and for anyone inspecting the page
    root.dataset.atoms = String(loaded.structure.atomCount)
    root.dataset.bonds = String(loaded.structure.bondCount)
    stage.viewerControls.orient(new NGL.Matrix4()) // same starting orientation for every molecule
    component.autoView(0)
    homeOrientation = stage.viewerControls.getOrientation()
    coloured = false
    root.dataset.coloured = "element"
    applyColors() // colours sent with the structure
    applyPositions() // positions may have changed while loading
    if (model.positions === null || model.positions === undefined) whenDrawn(model.version)
  }

  reset.addEventListener("click", resetView)
  model.on("molfile", loadStructure)
  // One Bokeh patch carries positions, version and maybe frame (in any order): apply them once,
  // after the whole patch. A new version alone (same positions) redraws too and is echoed.
  let scheduled = false
  function schedule() {
    if (scheduled) return
    scheduled = true
    queueMicrotask(() => {
      scheduled = false
      showFrame()
      applyPositions()
    })
  }
  model.on("positions", schedule)
  model.on("version", schedule)
  model.on("frame", showFrame)
  model.on("atom_colors", applyColors)
  model.on("legend", showLegend)
  model.on("background", () => stage.setParameters({ backgroundColor: model.background }))
  model.on("msg:custom", (msg) => {
    if (msg && msg.type === "reset_view") resetView()
  })
  const resize = () => stage.handleResize()
  const observer = new ResizeObserver(resize)
  observer.observe(root)
  model.on("after_layout", resize)
  model.on("remove", () => {
    observer.disconnect()
    stopListening()
    stage.dispose()
    NGL.ColormakerRegistry.removeScheme(perAtomScheme)
  })
  showFrame()
  showLegend()
  loadStructure()
}
