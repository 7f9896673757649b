/** `odm`: the paper's settings, i.e. {@link ./edsr-x4-w2a2-odm.ts}, under a short name. */
import * as Recipe from "../lib/Recipe.ts";
import paper from "./edsr-x4-w2a2-odm.ts";

export default Recipe.parse({ ...paper, name: "odm" }, "recipes/odm.ts");
