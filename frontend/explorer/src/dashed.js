// Dashed edges for sigma 3: the library's own rectangle edge program, with a fragment test that
// leaves gaps along the edge. Only the shader sources are patched; geometry, picking and
// uniforms are sigma's. Inhibitory edges (sign -1) use it.
import { EdgeRectangleProgram } from "sigma/rendering";

function patch(source, anchor, insert, where) {
  if (!source.includes(anchor)) {
    throw new Error(`ssa explorer: sigma's edge shader changed (no "${anchor}"); update src/dashed.js`);
  }
  return source.replace(anchor, where === "before" ? insert + anchor : anchor + insert);
}

export class EdgeDashedProgram extends EdgeRectangleProgram {
  getDefinition() {
    const def = super.getDefinition();
    let vs = def.VERTEX_SHADER_SOURCE;
    vs = patch(vs, "varying float v_feather;", "\nvarying float v_dash;", "after");
    // v_dash grows from 0 to the edge's length on screen (clip space x 100, about 4-6 px per unit)
    vs = patch(vs, "v_normal = unitNormal;",
      "\n  vec2 clipStart = (u_matrix * vec3(a_positionStart, 1)).xy;" +
      "\n  vec2 clipEnd = (u_matrix * vec3(a_positionEnd, 1)).xy;" +
      "\n  v_dash = a_positionCoef * length(clipEnd - clipStart) * 100.0;", "after");
    let fs = def.FRAGMENT_SHADER_SOURCE;
    fs = patch(fs, "varying float v_feather;", "\nvarying float v_dash;", "after");
    fs = patch(fs, "void main(void) {", "\n  if (mod(v_dash, 2.0) > 1.1) discard;", "after");
    return { ...def, VERTEX_SHADER_SOURCE: vs, FRAGMENT_SHADER_SOURCE: fs };
  }
}
