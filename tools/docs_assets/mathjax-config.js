/* MathJax 3 settings for the TeX that pymdownx.arithmatex marks up (`\(..\)` inline, `\[..\]` display).
   MathJax itself is copied into the site at build time (assets/mathjax/), so formulas typeset offline. */
window.MathJax = {
  tex: { inlineMath: [['\\(', '\\)']], displayMath: [['\\[', '\\]']], processEscapes: true, processEnvironments: true },
  options: { ignoreHtmlClass: '.*|', processHtmlClass: 'arithmatex' },
  svg: { fontCache: 'global' },
};
